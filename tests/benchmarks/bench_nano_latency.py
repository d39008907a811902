"""Latency of ``dreamlite generate`` on the embedded default model: 128², 4 steps, batch 1, torch CPU.

Runs the public pipeline (what the CLI and the server run) ``--runs`` times after ``--warmup`` runs and
reports the median and quartiles of the per-image wall time, with the stage split the pipeline records.
Not collected by pytest. The machine's load average is recorded too: on a shared machine other work
inflates the numbers.

    python tests/benchmarks/bench_nano_latency.py [--threads 2] [--runs 30] \
        [--out bench-results/nano_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from _machine import cpu_info

PROMPTS = (
    "a large red circle on the left and a small blue star at the top on a white background",
    "a small green triangle in the centre on a black background",
    "a large purple square on the right, a small yellow circle at the bottom and a large orange star "
    "at the top on a gray background",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded dreamlite-nano)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="bench-results/nano_latency.json")
    args = parser.parse_args()

    import torch

    from model_runtime import SampleSpec, load_pipeline
    from model_runtime.assets import default_model_dir

    torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else default_model_dir()
    pipe = load_pipeline(model, backend="torch", dtype=args.dtype)
    stages: dict[str, list[float]] = {}
    times: list[float] = []
    for i in range(args.warmup + args.runs):
        spec = SampleSpec(
            task="generate", prompt=PROMPTS[i % len(PROMPTS)], seed=i, width=128, height=128, steps=4
        )
        t0 = time.perf_counter()
        result = pipe.run([spec])[0]
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
            for k, v in result.timings.items():
                stages.setdefault(k, []).append(v)
    q = statistics.quantiles(times, n=4)
    report = {
        "benchmark": "nano_latency",
        "model": args.model or "embedded dreamlite-nano",
        "size": [128, 128],
        "steps": 4,
        "batch": 1,
        "dtype": args.dtype,
        "threads": args.threads,
        "runs": args.runs,
        "median_s": statistics.median(times),
        "p25_s": q[0],
        "p75_s": q[2],
        "min_s": min(times),
        "stage_median_s": {k: statistics.median(v) for k, v in stages.items()},
        "torch": torch.__version__,
        **cpu_info(),
        "load_average": os.getloadavg(),
    }
    print(
        f"dreamlite-nano generate 128x128, 4 steps, batch 1, {args.threads} threads, {args.dtype}: "
        f"median {report['median_s'] * 1000:.0f} ms (p25 {q[0] * 1000:.0f}, p75 {q[2] * 1000:.0f}, "
        f"min {report['min_s'] * 1000:.0f}) over {args.runs} runs; "
        f"load average {report['load_average'][0]:.1f}"
    )
    print(
        "stage medians (ms): " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in report["stage_median_s"].items())
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
