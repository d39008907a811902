"""Stage ① command line: generate/edit on the fixture, one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_runtime.recipe import read_recipe, rgb8_sha256
from tests.conftest import CASES, TINY_MODEL


def dreamlite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dreamlite", *args], capture_output=True, text=True, timeout=300
    )


def test_generate_reproduces_the_official_case(tmp_path: Path) -> None:
    out, trace = tmp_path / "o.png", tmp_path / "t.npz"
    proc = dreamlite(
        "generate",
        "--model",
        str(TINY_MODEL),
        "--prompt",
        "a red apple on a wooden table, soft light",
        "--size",
        "256x256",
        "--seed",
        "42",
        "--out",
        str(out),
        "--trace",
        str(trace),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    image = np.asarray(Image.open(out).convert("RGB"))
    expected = np.asarray(Image.open(CASES / "gen_256" / "output.png").convert("RGB"))
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    assert summary["rgb8_sha256"] == rgb8_sha256(image)
    recipe = read_recipe(out.read_bytes())
    assert recipe is not None
    assert (recipe["seed"], recipe["steps"], recipe["noise"], recipe["batch_size"]) == (42, 4, "torch-cpu", 1)
    assert len(recipe["weights_sha256"]) == 64
    with np.load(trace) as data:
        np.testing.assert_array_equal(data["input_ids"], np.load(CASES / "gen_256" / "input_ids.npy"))
        assert (
            float(np.abs(data["step3_latents"] - np.load(CASES / "gen_256" / "step3_latents.npy")).max())
            < 1e-4
        )
        assert "__meta__" in data


def test_edit_with_small_working_size(tmp_path: Path) -> None:
    out = tmp_path / "e.webp"
    proc = dreamlite(
        "edit",
        "--model",
        str(TINY_MODEL),
        "--image",
        str(CASES / "edit_1024" / "source.png"),
        "--prompt",
        "make the sky purple",
        "--working-size",
        "256x256",
        "--noise",
        "dln1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (300, 200)  # back at the source size, as infer_mobile.py


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--model", "/does/not/exist", "--prompt", "x"], "model folder does not exist"),
        (["generate", "--model", str(TINY_MODEL), "--prompt", "x", "--size", "100x256"], "multiples of 32"),
        (["generate", "--model", str(TINY_MODEL), "--prompt", "x", "--size", "big"], "WIDTHxHEIGHT"),
        (["generate", "--model", str(TINY_MODEL), "--prompt", "   "], "`prompt` must be a non-empty string"),
        (
            [
                "edit",
                "--model",
                str(TINY_MODEL),
                "--prompt",
                "x",
                "--image",
                str(TINY_MODEL / "model_index.json"),
            ],
            "not a readable image",
        ),
        (
            ["edit", "--model", str(TINY_MODEL), "--prompt", "x", "--image", "/no/such.png"],
            "not a readable file",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = dreamlite(*args, "--out", str(tmp_path / "o.png"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dreamlite: error:")
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
