"""qnn backend on the tiny bundle: the shipped sm8650 context binaries on the HTP emulator.

Checks image PSNR against torch fp32 (reported and above the calibrated floor), bit-identity across two
separate processes, one-target-per-process, and the opt-in CPU fallback that reports its provider.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_runtime import BackendUnavailableError, InferenceError, InvalidInputError, load_pipeline
from model_runtime.backends import qnn_backend
from tests.unit.model_runtime.backends.parity_cases import (
    PSNR_MIN_FP16_DB,
    PSNR_MIN_W8A16_DB,
    compare,
    digest,
    run_cases,
)

ROOT = Path(__file__).resolve().parents[4]
Bundle = tuple[Path, dict[str, Any]]
# The first test to ask for the shared bundle builds it (export + quantize + QNN compile, ~2 min on 2 idle
# cores; later runs reuse the cache), so these modules allow more than the default per-test timeout.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def torch_reference(tiny_pipeline: Any) -> dict[str, Any]:
    return run_cases(tiny_pipeline)


def _run_in_subprocesses(bundle: Path, tmp_path: Path, n: int) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.unit.model_runtime.backends.qnn_case_runner",
                str(bundle),
                "sm8650",
                str(tmp_path / f"run{i}.npz"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_emulator_results_are_close_to_torch_and_bit_identical_across_processes(
    built_bundle: Bundle, torch_reference: dict[str, Any], tmp_path: Path
) -> None:
    first, second = _run_in_subprocesses(built_bundle[0], tmp_path, 2)
    assert first["provider"] == second["provider"] == "QNNExecutionProvider"
    assert first["digest"] == second["digest"]  # every latent and image, bit for bit
    with np.load(tmp_path / "run0.npz") as data:
        got = {t: {"latent": data[f"{t}/latent"], "image": data[f"{t}/image"]} for t in ("generate", "edit")}
    report = compare(got, torch_reference)
    print("qnn sm8650 (HTP emulator) vs torch fp32:", report, "run_s:", first["run_s"], second["run_s"])
    print("emulator runs per process:", first["emulator_runs"], second["emulator_runs"])
    for task in ("generate", "edit"):
        assert report[task]["psnr_db"] >= PSNR_MIN_W8A16_DB, (task, report)


def test_in_process_backend_reports_target_and_refuses_a_second_target(built_bundle: Bundle) -> None:
    pipeline = load_pipeline(built_bundle[0], backend="qnn", target="sm8650")
    info = pipeline.backend.info
    assert (info.name, info.device, info.provider) == ("qnn", "sm8650", "QNNExecutionProvider")
    assert (info.details["soc_model"], info.details["htp_arch"]) == (57, 75)
    assert info.details["provider_options"]["soc_model"] == "57"
    assert info.details["session_options"]["session.disable_cpu_ep_fallback"] == "1"
    assert info.details["sdk_matches_bundle"] is True
    assert info.details["agreement"] == 2
    assert info.details["provider_options"]["htp_graph_finalization_optimization_mode"] == "3"
    assert set(info.details["graph_sha256"]) == {"unet/64x64", "vae_decoder/64x64", "vae_encoder/64x64"}
    with pytest.raises(BackendUnavailableError, match="one worker process per target"):
        qnn_backend.claim_target("sm8750")
    with pytest.raises(InvalidInputError, match="`target`"):
        load_pipeline(built_bundle[0], backend="qnn", target="sm8750")  # no binaries for it in this bundle


def test_fp16_contexts_are_closer_to_torch_than_w8a16(
    built_bundle: Bundle, torch_reference: dict[str, Any]
) -> None:
    # The fp32 graph compiled for the HTP runs in float16 there (enable_htp_fp16_precision=1).
    reports = {}
    for precision in ("fp16", "w8a16"):
        pipeline = load_pipeline(built_bundle[0], backend="qnn", target="sm8650", precision=precision)
        assert pipeline.backend.info.details["precision"] == precision
        reports[precision] = compare(run_cases(pipeline), torch_reference)
    print("qnn sm8650 (HTP emulator) vs torch fp32, fp16 / w8a16 contexts:", reports)
    for task in ("generate", "edit"):
        assert reports["fp16"][task]["psnr_db"] >= PSNR_MIN_FP16_DB, (task, reports)
        assert reports["fp16"][task]["psnr_db"] > reports["w8a16"][task]["psnr_db"] + 10.0, (task, reports)


def test_cpu_fallback_only_when_configured_and_reported(
    built_bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> dict[str, str]:
        raise BackendUnavailableError("the qnn backend needs the onnxruntime-qnn package: (simulated)")

    monkeypatch.setattr(qnn_backend, "qnn_versions", missing)
    with pytest.raises(BackendUnavailableError, match="simulated"):
        load_pipeline(built_bundle[0], backend="qnn", target="sm8650")
    pipeline = load_pipeline(built_bundle[0], backend="qnn", target="sm8650", fallback="cpu")
    info = pipeline.backend.info
    assert info.provider == "CPUExecutionProvider"
    assert info.details["requested_provider"] == "QNNExecutionProvider"
    assert "simulated" in info.details["fallback_reason"]
    cpu = load_pipeline(built_bundle[0], backend="onnx", precision="w8a16")
    # The fallback runs the same QDQ graphs as the onnx backend's w8a16 precision, bit for bit.
    assert digest(run_cases(pipeline)) == digest(run_cases(cpu))


class _FlakySession:
    """Returns the given outputs in turn (what a non-reproducible emulator looks like)."""

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)
        self.calls = 0

    def run(self, _names: Any, _feeds: Any) -> list[np.ndarray]:
        self.calls += 1
        return [np.full((2,), next(self.values), dtype=np.float32)]


def test_agreement_returns_the_result_seen_n_times_and_counts_disagreements() -> None:
    stats = {"calls": 0, "runs": 0, "disagreeing_calls": 0}
    flaky = _FlakySession([1.0, 2.0, 1.0, 3.0, 1.0])
    out = qnn_backend.AgreedSession(flaky, 3, 10, stats).run(None, {})
    assert out[0].tolist() == [1.0, 1.0]
    assert (flaky.calls, stats) == (5, {"calls": 1, "runs": 5, "disagreeing_calls": 1})
    steady = _FlakySession([4.0] * 3)
    assert qnn_backend.AgreedSession(steady, 3, 10, stats).run(None, {})[0][0] == 4.0
    assert stats == {"calls": 2, "runs": 8, "disagreeing_calls": 1}
    with pytest.raises(InferenceError, match="4 different results in 4 runs"):
        qnn_backend.AgreedSession(_FlakySession([1.0, 2.0, 3.0, 4.0]), 2, 4, stats).run(None, {})
