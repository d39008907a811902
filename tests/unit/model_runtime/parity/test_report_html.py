"""Parity report page, rendered by a real headless Chromium (Debian's chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model_runtime import Pipeline
from model_runtime.parity.canonical import CanonicalRequest
from model_runtime.parity.compare import compare_traces
from model_runtime.parity.report_html import diff_heatmap, render_report
from model_runtime.parity.runner import run_request

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian chromium is required (scripts/test installs it): apt-get install chromium")
    return path


@pytest.mark.browser
def test_report_renders_in_chromium(tiny_pipeline: Pipeline, tmp_path: Path) -> None:
    req = CanonicalRequest.create(task="generate", prompt="a red apple", seed=3, width=128, height=128)
    ref, ref_t = run_request(tiny_pipeline, req)
    dev_t: dict[str, Any] = dict(ref_t)
    dev_t["image"] = ref_t["image"].copy()
    dev_t["image"][10:20, 10:20] = 0  # a visible local difference
    from model_runtime.parity.trace import ParityTrace, record

    dev = ParityTrace.model_validate(
        {**ref.model_dump(mode="json"), "executor": {**ref.executor, "name": "phone"}}
    )
    dev.stages[-1] = record("image", dev_t["image"])
    report = compare_traces(ref, dev, reference_tensors=ref_t, device_tensors=dev_t)
    assert report.first_divergent_stage == "image"
    page = tmp_path / "report.html"
    page.write_text(render_report(report, ref_t["image"], dev_t["image"]))
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert 'data-images-loaded="true"' in dom
    rows = re.search(r'data-stage-rows="(\d+)"', dom)
    assert rows is not None
    assert int(rows.group(1)) == len(report.stages)
    assert re.search(r'id="first-divergent">image<', dom)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 10, "the screenshot shows content"


def test_heatmap_marks_only_differences() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[2, 3] = 50
    heat = diff_heatmap(a, b)
    assert heat[2, 3, 0] == 255
    assert heat.sum() == heat[2, 3].sum()
