"""Benchmark: per-step (one UNet call, batch 1) latency of torch vs onnx CPU EP vs the QNN HTP emulator.

Two scenarios, each measured side by side in one run so the ratios share the machine's state:

* ``tiny`` — the conformance model's bundle at 64×64 through each backend's ``denoiser`` (the same call
  the pipeline makes): torch fp32, onnx fp32 / fp16 / w8a16 on the CPU EP, qnn sm8650 context binary.
* ``real`` — the real DreamLite-mobile UNet architecture (random weights) at 256², using the graphs
  ``bench_real_unet_export.py`` wrote: torch fp32 module, ORT CPU EP on fp32 / fp16 / w8a16, and the
  sm8650 context binary on the emulator (about 3.5 minutes per call on 2 cores; one call).

    nice -n 10 .venv/bin/python tests/benchmarks/bench_backends.py --real-dir bench-results/real-unet

Prints a table and writes ``bench-results/backends.json``. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = ROOT / "tests" / "fixtures" / "conformance" / "tiny-dreamlite-mobile"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Scenario:
    """One model × one set of backends."""

    name: str
    reps: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def time(self, label: str, fn: Callable[[], Any], reps: int | None = None, warmup: bool = True) -> Any:
        """Median wall time of ``fn`` (after one warm-up call when ``warmup``)."""
        out = fn() if warmup else None
        times = []
        for _ in range(reps or self.reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        self.results[label] = {"median_s": statistics.median(times), "runs_s": times}
        print(f"  {self.name:5s} {label:28s} {statistics.median(times):10.4f} s", file=sys.stderr, flush=True)
        return out

    def ratios(self, base: str) -> None:
        """Add ``ratio_vs_<base>`` to every result."""
        ref = self.results[base]["median_s"]
        for r in self.results.values():
            r[f"ratio_vs_{base}"] = r["median_s"] / ref


def _tiny_bundle(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamlite",
            "export",
            "--model",
            str(TINY_MODEL),
            "--out",
            str(path),
            "--size",
            "64x64",
            "--steps",
            "2",
            "--calibration-prompts",
            "2",
            "--parity",
            "graphs",
            "--force",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


def bench_tiny(bundle: Path, reps: int, threads: int) -> Scenario:
    """Tiny model, 64×64, through the backends' denoisers."""
    from model_runtime.backends import create_backend

    scenario = Scenario("tiny", reps)
    rng = np.random.default_rng(0)
    seq = json.loads((bundle / "manifest.json").read_text())["text"]["seq_len"]
    sample = rng.standard_normal((1, 4, 8, 16)).astype(np.float32)  # (1, 4, h, 2w)
    timestep = np.asarray([750.0], np.float32)
    text = rng.standard_normal((1, seq, 64)).astype(np.float32)
    mask = np.zeros((1, seq), np.int64)
    mask[:, :20] = 1
    time_ids = np.asarray([[64.0, 64.0]], np.float32)
    backends: list[tuple[str, Any]] = [("torch fp32", create_backend("torch", TINY_MODEL))]
    for precision in ("fp32", "fp16", "w8a16"):
        backend = create_backend("onnx", bundle, precision=precision, threads=threads)
        backends.append((f"onnx {precision} (CPU EP)", backend))
    backends.append(("qnn w8a16 sm8650 (emulator)", create_backend("qnn", bundle, target="sm8650")))
    for label, backend in backends:
        scenario.time(label, lambda b=backend: b.denoiser(sample, timestep, text, mask, time_ids))
    scenario.ratios("torch fp32")
    return scenario


def bench_real(folder: Path, reps: int, threads: int) -> Scenario:
    """Real architecture, 256², torch module vs the exported graphs."""
    import torch
    from bench_real_unet_export import build_real_unet, unet_feeds

    from model_runtime.backends.onnx_backend import CPU_EP, REFERENCE_SESSION, open_session
    from model_runtime.backends.qnn_backend import claim_target, create_qnn_session, provider_options

    scenario = Scenario("real", reps)
    feeds = unet_feeds()
    unet = build_real_unet()
    args = [torch.from_numpy(feeds[k]) for k in ("sample", "timestep", "encoder_hidden_states")]
    kwargs = {
        "encoder_attention_mask": torch.from_numpy(feeds["encoder_attention_mask"]),
        "added_cond_kwargs": {"time_ids": torch.from_numpy(feeds["time_ids"])},
        "return_dict": False,
    }

    def torch_step() -> Any:
        with torch.inference_mode():
            return unet(*args, **kwargs)[0]

    scenario.time("torch fp32", torch_step)
    settings = {**REFERENCE_SESSION, "intra_op_num_threads": threads}
    for precision in ("fp32", "fp16", "w8a16"):
        path = folder / f"unet.{precision}.onnx"
        if path.is_file():
            session = open_session(path, [CPU_EP], settings)
            scenario.time(f"onnx {precision} (CPU EP)", lambda s=session: s.run(None, feeds))
            del session
    ctx = folder / "qnn" / "unet.w8a16_ctx.onnx"
    if ctx.is_file():
        claim_target("sm8650")
        session = create_qnn_session(ctx, provider_options(57, 75))
        scenario.time("qnn w8a16 sm8650 (emulator)", lambda: session.run(None, feeds), reps=1, warmup=False)
    scenario.ratios("torch fp32")
    return scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-bundle", type=Path, default=ROOT / "bench-results" / "tiny-bundle")
    parser.add_argument("--real-dir", type=Path, default=ROOT / "bench-results" / "real-unet")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--real-reps", type=int, default=3)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and ORT intra-op threads (default 1: on a shared 2-core box, 2-thread OpenMP barriers "
        "stall behind other jobs; the emulator is single-threaded anyway)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "backends.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_avg_start": os.getloadavg(),
        },
        "scenarios": {},
    }
    tiny = bench_tiny(_tiny_bundle(args.tiny_bundle), args.reps, args.threads)
    report["scenarios"]["tiny_64x64"] = asdict(tiny)
    if not args.skip_real and (args.real_dir / "unet.fp32.onnx").is_file():
        report["scenarios"]["real_256x256"] = asdict(bench_real(args.real_dir, args.real_reps, args.threads))
    report["machine"]["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for name, scenario in report["scenarios"].items():
        print(f"{name}")
        for label, r in scenario["results"].items():
            print(f"  {label:30s} {r['median_s']:10.4f} s   ×{r['ratio_vs_torch fp32']:8.2f} vs torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
