"""Benchmark: export of the real DreamLite-mobile UNet architecture (random weights) at 256², every stage.

Builds ``DreamLiteUNetModel`` from the official config (``../shared/docs/dreamlite-mobile-unet-keys.json``,
389,968,388 parameters, ``torch.manual_seed(0)``) and runs the exporter's own stage functions on it:
ONNX fp32 (opset 17, explicit attention) → fp16 → QDQ w8a16 (random calibration inputs spread over the
timesteps: the weights are random anyway) → QNN EP context binary for sm8650 → one forward of each graph
vs torch fp32. Each stage runs in its own process so its wall time and peak RSS are its own.

    nice -n 10 .venv/bin/python tests/benchmarks/bench_real_unet_export.py --out bench-results/real-unet

Writes ``<out>/results.json`` (wall time, peak RSS, file sizes, errors); the graphs stay in ``<out>`` for
``bench_backends.py --real-dir``. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
KEYS_JSON = ROOT.parent / "shared" / "docs" / "dreamlite-mobile-unet-keys.json"
SIZE = (256, 256)
SEQ_LEN = 128
TEXT_DIM = 2048
STAGES = ("export", "fp16", "w8a16", "qnn", "cpu")


def build_real_unet() -> Any:
    """The official architecture with seeded random weights and the export attention processor."""
    import torch
    from diffusers import DreamLiteUNetModel

    from model_runtime.export.graphs import ExplicitAttnProcessor

    config = {k: v for k, v in json.loads(KEYS_JSON.read_text())["config"].items() if not k.startswith("_")}
    torch.manual_seed(0)
    unet = DreamLiteUNetModel(**config).eval().requires_grad_(False)
    unet.set_attn_processor(ExplicitAttnProcessor())
    return unet


def unet_feeds(seed: int = 123, timestep: float = 600.0) -> dict[str, np.ndarray]:
    """One fixed UNet input at 256² (text: 40 real tokens, the rest padding)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((1, SEQ_LEN), np.float32)
    mask[:, :40] = 1
    return {
        "sample": rng.standard_normal((1, 4, SIZE[1] // 8, 2 * SIZE[0] // 8)).astype(np.float32),
        "timestep": np.asarray([timestep], np.float32),
        "encoder_hidden_states": rng.standard_normal((1, SEQ_LEN, TEXT_DIM)).astype(np.float32),
        "encoder_attention_mask": mask,
        "time_ids": np.asarray([[float(SIZE[0]), float(SIZE[1])]], np.float32),
    }


def calibration_feeds(n: int) -> list[dict[str, np.ndarray]]:
    """Random calibration inputs at the 4-step schedule's timesteps (and a few more)."""
    steps = [1000.0, 904.5, 759.5, 512.8, 900.0, 750.0, 500.0, 250.0][:n]
    return [unet_feeds(seed=1000 + i, timestep=t) for i, t in enumerate(steps)]


def _stage_export(out: Path) -> dict[str, Any]:
    import torch

    from model_runtime.export.graphs import TorchModels
    from model_runtime.export.onnx_export import export_unet

    t0 = time.perf_counter()
    unet = build_real_unet()
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in unet.parameters())
    feeds = unet_feeds()
    with torch.inference_mode():
        args = [torch.from_numpy(feeds[k]) for k in ("sample", "timestep", "encoder_hidden_states")]
        kwargs = {
            "encoder_attention_mask": torch.from_numpy(feeds["encoder_attention_mask"]),
            "added_cond_kwargs": {"time_ids": torch.from_numpy(feeds["time_ids"])},
            "return_dict": False,
        }
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            ref = unet(*args, **kwargs)[0]
            times.append(time.perf_counter() - t0)
    np.savez(out / "reference.npz", **feeds, noise_pred=ref.numpy())
    models = TorchModels(
        unet=unet, vae=torch.nn.Identity(), text_dim=TEXT_DIM, latent_channels=4, vae_scale=8
    )
    t0 = time.perf_counter()
    export_unet(models, SIZE, SEQ_LEN, out / "unet.fp32.onnx")
    return {
        "parameters": params,
        "build_s": build_s,
        "torch_forward_s": times,
        "export_s": time.perf_counter() - t0,
    }


def _stage_fp16(out: Path) -> dict[str, Any]:
    from model_runtime.export.fp16 import convert_fp16

    return convert_fp16(out / "unet.fp32.onnx", out / "unet.fp16.onnx")


def _stage_w8a16(out: Path) -> dict[str, Any]:
    from model_runtime.export.config import QuantSettings
    from model_runtime.export.quantize import quantize_w8a16

    return quantize_w8a16(
        out / "unet.fp32.onnx", out / "unet.w8a16.onnx", calibration_feeds(8), QuantSettings()
    )


def _stage_qnn(out: Path) -> dict[str, Any]:
    from model_runtime.backends.qnn_backend import claim_target, create_qnn_session, provider_options

    claim_target("sm8650")
    options = provider_options(57, 75)
    ctx = out / "qnn" / "unet.w8a16_ctx.onnx"
    ctx.parent.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    session = create_qnn_session(out / "unet.w8a16.onnx", options, context_out=ctx)
    compile_s = time.perf_counter() - t0
    del session
    t0 = time.perf_counter()
    session = create_qnn_session(ctx, options)
    load_s = time.perf_counter() - t0
    feeds = unet_feeds()
    t0 = time.perf_counter()
    result = session.run(None, feeds)[0]
    run_s = time.perf_counter() - t0
    np.save(out / "qnn_out.npy", result)
    return {"compile_s": compile_s, "load_s": load_s, "run_s": run_s}


def _stage_cpu(out: Path) -> dict[str, Any]:
    from model_runtime.backends.onnx_backend import CPU_EP, REFERENCE_SESSION, open_session

    with np.load(out / "reference.npz") as data:
        ref = data["noise_pred"]
        feeds = {k: data[k] for k in data.files if k != "noise_pred"}
    report: dict[str, Any] = {}
    settings = {**REFERENCE_SESSION, "intra_op_num_threads": 2}
    for precision in ("fp32", "fp16", "w8a16"):
        t0 = time.perf_counter()
        session = open_session(out / f"unet.{precision}.onnx", [CPU_EP], settings)
        create_s = time.perf_counter() - t0
        times, result = [], None
        for _ in range(3):
            t0 = time.perf_counter()
            result = session.run(None, feeds)[0]
            times.append(time.perf_counter() - t0)
        report[precision] = {"create_s": create_s, "run_s": times, **_error(result, ref)}
        del session
    qnn = out / "qnn_out.npy"
    if qnn.is_file():
        report["qnn:sm8650"] = _error(np.load(qnn), ref)
    return report


def _error(got: Any, ref: np.ndarray) -> dict[str, float]:
    diff = np.abs(np.asarray(got, np.float64) - ref)
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "rel_l2": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
    }


def run_stage(name: str, out: Path) -> dict[str, Any]:
    """Run one stage in a child process; return its result with wall time and peak RSS."""
    t0 = time.perf_counter()
    log = out / f"stage-{name}.log"
    with log.open("w") as err, (out / f"stage-{name}.json").open("w") as res:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--stage", name, "--out", str(out)], cwd=ROOT, stdout=res, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": log.read_text().strip().splitlines()[-5:], "wall_s": wall}
    result: dict[str, Any] = json.loads((out / f"stage-{name}.json").read_text().strip().splitlines()[-1])
    return {**result, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "real-unet")
    parser.add_argument("--stage", choices=STAGES, help="(internal) run one stage in this process")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to run (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        fn = {"export": _stage_export, "fp16": _stage_fp16, "w8a16": _stage_w8a16, "qnn": _stage_qnn}.get(
            args.stage, _stage_cpu
        )
        print(json.dumps(fn(args.out)))
        return 0
    results: dict[str, Any] = {
        "model": "DreamLiteUNetModel, official config, random weights (torch.manual_seed(0))",
        "size": f"{SIZE[0]}x{SIZE[1]}",
        "seq_len": SEQ_LEN,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_start": os.getloadavg(),
        },
        "stages": {},
    }
    for name in args.stages.split(","):
        print(f"stage {name} …", file=sys.stderr, flush=True)
        results["stages"][name] = run_stage(name, args.out)
        print(f"stage {name}: {json.dumps(results['stages'][name])[:400]}", file=sys.stderr, flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    results["files_bytes"] = {
        p.relative_to(args.out).as_posix(): p.stat().st_size
        for p in sorted(args.out.rglob("*.onnx"))
        if p.is_file()
    }
    results["files_bytes"].update(
        {p.relative_to(args.out).as_posix(): p.stat().st_size for p in sorted(args.out.rglob("*.bin"))}
    )
    results["machine"]["load_avg_end"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
