"""Export stage "text encoder ONNX": the exported Qwen3-VL graphs, their M-RoPE positions and the runtime.

Uses the shared tiny bundle (built once per code version, ``tiny_bundle.py``), whose export runs the stage
by default. Checks: numpy M-RoPE positions equal transformers' ``get_rope_index``; the ONNX encoder
reproduces the official pre-norm states of the three conformance cases and the torch host encoder on
other prompts; padding never reaches real tokens; an over-long prompt is refused naming the prompt; the
manifest and the backends report the encoder; a bundle backend generates and edits without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_runtime.backends.base import TextEncoderInput
from model_runtime.bundle import (
    Bundle as OpenedBundle,
)
from model_runtime.bundle import (
    HostTextEncoder,
    OnnxTextEncoder,
    bundle_text_encoder,
    open_bundle,
)
from model_runtime.errors import InvalidInputError
from model_runtime.export.calibration import synthetic_image
from model_runtime.preprocess import resize_lanczos, vlm_inputs
from model_runtime.prompts import build_prompt
from model_runtime.text_positions import mrope_position_ids, pad_right
from model_runtime.tokenization import PromptTokenizer
from tests.unit.model_runtime.export.tiny_bundle import ROOT, SEQ_LEN, TINY_MODEL

Bundle = tuple[Path, dict[str, Any]]
CASES = ROOT / "tests" / "fixtures" / "conformance" / "cases"
IMAGE_TOKEN = 1212
pytestmark = pytest.mark.timeout(900)  # the first user of the shared bundle builds it


@pytest.fixture(scope="module")
def bundle(built_bundle: Bundle) -> OpenedBundle:
    return open_bundle(built_bundle[0])


@pytest.fixture(scope="module")
def encoder(bundle: OpenedBundle) -> OnnxTextEncoder:
    enc, _id, _details = bundle_text_encoder(bundle)
    assert isinstance(enc, OnnxTextEncoder)
    return enc


@pytest.fixture(scope="module")
def host(bundle: OpenedBundle) -> HostTextEncoder:
    return HostTextEncoder(bundle.path("text_encoder"))


@pytest.fixture(scope="module")
def qwen() -> Any:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    model: Any = Qwen3VLForConditionalGeneration.from_pretrained(
        TINY_MODEL / "text_encoder", dtype=torch.float32
    )
    return model.eval()


def _case(name: str) -> TextEncoderInput:
    folder = CASES / name
    ids = np.load(folder / "input_ids.npy")[0]  # (T,) int64
    if not (folder / "vlm_pixel_values.npy").is_file():
        return TextEncoderInput(ids)
    return TextEncoderInput(
        ids, np.load(folder / "vlm_pixel_values.npy"), np.load(folder / "image_grid_thw.npy")
    )


def _edit_input(bundle: OpenedBundle, prompt: str, image_index: int) -> TextEncoderInput:
    spec = bundle.model_spec()
    image = resize_lanczos(synthetic_image(image_index, (120, 90)), spec.config.vlm_image_size)
    pixels, grid = vlm_inputs(image, spec.processor_config)
    tokenizer = PromptTokenizer(spec.tokenizer_file)
    n_image = int(grid.prod()) // 4
    return TextEncoderInput(tokenizer.encode(build_prompt("edit", prompt), n_image), pixels, grid)


# ------------------------------------------------------------------------------------------- positions
def _reference_positions(qwen: Any, ids: np.ndarray, grids: list[list[int]] | None) -> np.ndarray:
    import torch

    t = torch.from_numpy(ids)[None]  # (1, T)
    grid = None if not grids else torch.tensor(grids, dtype=torch.int64)
    types = (t == IMAGE_TOKEN).to(torch.int32)
    positions, _ = qwen.model.get_rope_index(t, mm_token_type_ids=types, image_grid_thw=grid)
    out: np.ndarray = positions.numpy()  # (3, 1, T)
    return out


@pytest.mark.parametrize(
    ("layout", "grids"),
    [
        ("text", None),
        ("fixture_edit", [[1, 16, 16]]),
        ("image_first", [[1, 4, 8]]),
        ("image_last", [[1, 6, 2]]),
        ("two_images", [[1, 4, 4], [1, 2, 8]]),
        ("two_frames", [[2, 4, 6]]),
    ],
)
def test_mrope_positions_equal_transformers_get_rope_index(
    qwen: Any, layout: str, grids: list[list[int]] | None
) -> None:
    rng = np.random.default_rng(5)

    def text(n: int) -> list[int]:
        return [int(v) for v in rng.integers(0, 1200, size=n)]

    def image(g: list[int]) -> list[int]:
        return [IMAGE_TOKEN] * (g[0] * g[1] * g[2] // 4)

    if layout == "fixture_edit":
        ids = np.load(CASES / "edit_1024" / "input_ids.npy")[0]
    elif layout == "text":
        ids = np.asarray(text(23), dtype=np.int64)
    elif layout == "image_first":
        ids = np.asarray(image(grids[0]) + text(7), dtype=np.int64)  # type: ignore[index]
    elif layout == "image_last":
        ids = np.asarray(text(9) + image(grids[0]), dtype=np.int64)  # type: ignore[index]
    elif layout == "two_images":
        ids = np.asarray(text(3) + image(grids[0]) + text(4) + image(grids[1]) + text(2), dtype=np.int64)  # type: ignore[index]
    else:
        ids = np.asarray(text(5) + image(grids[0]) + text(3), dtype=np.int64)  # type: ignore[index]
    expected = _reference_positions(qwen, ids, grids)
    got = mrope_position_ids(ids, IMAGE_TOKEN, grids, 2)
    assert got.shape == (3, 1, ids.shape[0])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    padded = mrope_position_ids(ids, IMAGE_TOKEN, grids, 2, length=ids.shape[0] + 10)  # (3, 1, T + 10)
    np.testing.assert_array_equal(padded[:, :, : ids.shape[0]], expected)
    assert (np.diff(padded[:, 0, ids.shape[0] - 1 :], axis=1) >= 0).all()


def test_mrope_positions_refuse_a_token_run_that_does_not_match_the_grid() -> None:
    ids = np.asarray([1, 2] + [IMAGE_TOKEN] * 5 + [3], dtype=np.int64)
    with pytest.raises(InvalidInputError, match="`image` token run does not match its grid"):
        mrope_position_ids(ids, IMAGE_TOKEN, [[1, 4, 4]], 2)


# ------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case", ["gen_256", "gen_320x192", "edit_1024"])
def test_onnx_encoder_reproduces_the_official_prenorm_states(encoder: OnnxTextEncoder, case: str) -> None:
    expected = np.load(CASES / case / "text_hidden_last.npy")[0]  # (T, D) official pre-norm states
    postnorm = np.load(CASES / case / "text_hidden_last_postnorm.npy")[0]
    got = encoder(_case(case))  # (T, D) float32
    assert got.shape == expected.shape
    assert got.dtype == np.float32
    err = float(np.abs(got - expected).max())
    print(f"{case}: ONNX text encoder vs official text_hidden_last max abs {err:.3g}")
    assert err <= 1e-4
    assert float(np.abs(got - postnorm).max()) > 0.1  # the post-norm mistake would be caught


def _long_prompt(tokenizer: PromptTokenizer, tokens: int) -> str:
    words: list[str] = []
    while tokenizer.encode(build_prompt("generate", " ".join([*words, "red"]))).shape[0] <= tokens:
        words.append("red")
    return " ".join(words)


def test_onnx_encoder_matches_the_torch_host_encoder(
    bundle: OpenedBundle, encoder: OnnxTextEncoder, host: HostTextEncoder
) -> None:
    tokenizer = PromptTokenizer(bundle.model_spec().tokenizer_file)
    long = tokenizer.encode(build_prompt("generate", _long_prompt(tokenizer, encoder.max_tokens)))
    assert encoder.max_tokens - 2 <= long.shape[0] <= encoder.max_tokens
    items = {
        "one word": TextEncoderInput(tokenizer.encode(build_prompt("generate", "a"))),
        "ragged": TextEncoderInput(
            tokenizer.encode(build_prompt("generate", "a small blue boat on a calm lake"))
        ),
        f"near max ({long.shape[0]} of {encoder.max_tokens} tokens)": TextEncoderInput(long),
        "edit": _edit_input(bundle, "add a small boat", 11),
        "edit, other image": _edit_input(bundle, "turn it into a pencil sketch with soft shadows", 12),
    }
    errors = {}
    for name, item in items.items():
        got, want = encoder(item), host(item)  # (T, D) float32 each
        assert got.shape == want.shape == (item.input_ids.shape[0], encoder.hidden)
        errors[name] = float(np.abs(got - want).max())
    print("ONNX vs torch host encoder, max abs:", json.dumps(errors))
    assert max(errors.values()) <= 1e-4, errors


def test_right_padding_never_reaches_real_tokens(encoder: OnnxTextEncoder) -> None:
    """Causal model: real-token rows are bit-identical whatever the padded positions hold."""
    ids = np.load(CASES / "gen_256" / "input_ids.npy")[0]  # (T,)
    session = encoder._session("text")
    runs = []
    for pad_id, junk_positions in ((encoder.pad_token_id, False), (7, True)):
        padded, mask = pad_right(ids, encoder.max_tokens, pad_id)  # (1, L), (1, L)
        positions = mrope_position_ids(ids, -1, None, 2, encoder.max_tokens)  # (3, 1, L)
        if junk_positions:
            positions[:, :, ids.shape[0] :] = 999
        feeds = {
            "input_ids": padded,
            "attention_mask": mask,
            "position_ids": positions,
            "image_mask": np.zeros_like(mask),
            "image_embeds": np.zeros((encoder.image_tokens, encoder.hidden), np.float32),
            "deepstack_embeds": np.zeros(
                (encoder.deepstack_layers, encoder.image_tokens, encoder.hidden), np.float32
            ),
        }
        runs.append(session.run(None, feeds)[0][0, : ids.shape[0]])  # (T, D)
    assert np.array_equal(runs[0], runs[1])


def test_over_long_prompt_is_refused_naming_the_prompt(
    bundle: OpenedBundle, encoder: OnnxTextEncoder
) -> None:
    ids = np.full((encoder.max_tokens + 1,), 5, dtype=np.int64)
    with pytest.raises(InvalidInputError, match="`prompt` is too long") as err:
        encoder(TextEncoderInput(ids))
    assert err.value.field == "prompt"
    from model_runtime import load_pipeline
    from model_runtime.types import SampleSpec

    pipeline = load_pipeline(bundle.root, backend="onnx", preload=False)
    with pytest.raises(InvalidInputError, match="`prompt` is too long") as err:
        pipeline.plan(SampleSpec(task="generate", prompt="red " * 400, seed=1, width=64, height=64))
    assert err.value.field == "prompt"


def test_wrong_vlm_patches_are_refused(encoder: OnnxTextEncoder) -> None:
    item = _case("edit_1024")
    assert item.pixel_values is not None
    bad = TextEncoderInput(item.input_ids, item.pixel_values[:128], np.asarray([[1, 8, 16]], dtype=np.int64))
    with pytest.raises(InvalidInputError, match="`image` VLM patches do not match"):
        encoder(bad)


# ------------------------------------------------------------------------------------ manifest, backends
def test_manifest_records_the_graphs_with_hashes_and_parity(bundle: OpenedBundle) -> None:
    facts = bundle.manifest.text.encoder
    assert facts["exported"] is True
    assert facts["runtime"] == "onnx"
    assert facts["max_tokens"] == SEQ_LEN + 64  # seq_len + the larger drop_idx (edit: 64)
    assert facts["session"]["intra_op_num_threads"] == 1
    assert facts["session"]["graph_optimization_level"] == "ORT_ENABLE_BASIC"
    for name in ("text", "vision"):
        graph = facts["graphs"][name]
        assert bundle.manifest.files[graph["path"]].sha256 == graph["sha256"]  # content-addressed
    text_inputs = {i["name"]: (i["shape"], i["dtype"]) for i in facts["graphs"]["text"]["inputs"]}
    t = facts["max_tokens"]
    assert text_inputs["input_ids"] == ([1, t], "int64")
    assert text_inputs["position_ids"] == ([3, 1, t], "int64")
    assert facts["graphs"]["text"]["outputs"][0]["shape"] == [1, t, 64]
    assert facts["graphs"]["vision"]["inputs"][0]["shape"] == [256, 1536]
    assert facts["parity"]["max_abs"] <= 1e-4
    assert facts["host_fallback"] == "text_encoder"


def test_backends_select_the_onnx_encoder_and_fall_back_to_the_host(bundle: OpenedBundle) -> None:
    from model_runtime.backends.onnx_backend import load_onnx_backend

    backend = load_onnx_backend(bundle.root, preload=False)
    assert isinstance(backend.text_encoder, OnnxTextEncoder)
    assert backend.info.details["text_encoder"]["runtime"] == "onnx"
    assert backend.info.details["text_encoder"]["provider"] == "CPUExecutionProvider"
    assert backend.info.encoder_id.startswith("onnx:")
    host_facts = {"exported": False, "runtime": "host", "path": "text_encoder"}
    text = bundle.manifest.text.model_copy(update={"encoder": host_facts})
    old = OpenedBundle(bundle.root, bundle.manifest.model_copy(update={"text": text}), bundle.bundle_id)
    encoder, encoder_id, details = bundle_text_encoder(old)
    assert isinstance(encoder, HostTextEncoder)
    assert encoder_id.startswith("host-torch:")
    assert encoder_id != backend.info.encoder_id
    assert details["runtime"] == "host"


def test_export_option_turns_the_stage_off() -> None:
    from model_runtime.export.cli import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    on = config_from_args(parser.parse_args(["export", "--out", "x"]))
    off = config_from_args(parser.parse_args(["export", "--out", "x", "--no-text-encoder-onnx"]))
    sized = config_from_args(parser.parse_args(["export", "--out", "x", "--text-max-tokens", "300"]))
    assert on.text_encoder_onnx
    assert not off.text_encoder_onnx
    assert on.text_max_tokens is None
    assert sized.text_max_tokens == 300
    with pytest.raises(InvalidInputError, match="--text-max-tokens"):
        sized.__class__(text_max_tokens=0).validate()


TORCH_FREE = """
import sys
import numpy as np
from model_runtime import load_pipeline
from model_runtime.export.calibration import synthetic_image
from model_runtime.types import SampleSpec

pipeline = load_pipeline(sys.argv[1], backend="onnx")
specs = [
    SampleSpec(task="generate", prompt="a lighthouse on a cliff", seed=7, width=64, height=64, steps=2,
               noise="dln1"),
    SampleSpec(task="edit", prompt="make it red", seed=8, image=synthetic_image(3, (96, 80)),
               working_size=(64, 64), steps=2, noise="dln1"),
]
for spec in specs:
    result = pipeline.run([spec])[0]
    assert result.image.dtype == np.uint8
print("torch" in sys.modules, "transformers" in sys.modules, pipeline.backend.info.encoder_id)
"""


def test_bundle_backend_generates_and_edits_without_torch(built_bundle: Bundle) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(built_bundle[0])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_loaded, transformers_loaded, encoder_id = proc.stdout.strip().splitlines()[-1].split()
    assert (torch_loaded, transformers_loaded) == ("False", "False")
    assert encoder_id.startswith("onnx:")


DEVICE_SIM = """
import argparse
import json
import sys

from model_runtime.parity.cli import register

parser = argparse.ArgumentParser()
register(parser.add_subparsers())
for argv in json.loads(sys.argv[1]):
    args = parser.parse_args(["device-sim", *argv])
    assert args.handler(args) == 0  # cmd_device_sim raises if torch was imported
print("torch" in sys.modules, "transformers" in sys.modules)
"""


def test_device_sim_generates_and_edits_on_the_qnn_backend_without_torch(
    built_bundle: Bundle, tmp_path: Path
) -> None:
    """``device-sim``'s handler (qnn backend, HTP emulator) runs both tasks with onnxruntime only."""
    from PIL import Image

    from model_runtime.parity.canonical import CanonicalRequest

    image = synthetic_image(3, (96, 80))
    Image.fromarray(image).save(tmp_path / "src.png")
    generate = CanonicalRequest.create(
        task="generate", prompt="a lighthouse on a cliff", seed=7, width=64, height=64, steps=2
    )
    edit = CanonicalRequest.create(
        task="edit",
        prompt="make it red",
        seed=8,
        width=96,
        height=80,
        steps=2,
        image=image,
        working_size=(64, 64),
    )
    (tmp_path / "gen.json").write_bytes(generate.canonical_json())
    (tmp_path / "edit.json").write_bytes(edit.canonical_json())
    bundle = str(built_bundle[0])
    argv = [
        [
            "--bundle",
            bundle,
            "--request",
            str(tmp_path / "gen.json"),
            "--out",
            str(tmp_path / "gen.trace.json"),
        ],
        [
            *("--bundle", bundle, "--request", str(tmp_path / "edit.json")),
            *("--image", str(tmp_path / "src.png"), "--out", str(tmp_path / "edit.trace.json")),
        ],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_SIM, json.dumps(argv)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False False"
    for name in ("gen", "edit"):
        trace = json.loads((tmp_path / f"{name}.trace.json").read_text())
        assert trace["executor"]["provider"] == "QNNExecutionProvider"
        assert any(stage["name"] == "text_features" for stage in trace["stages"])
