"""Benchmark: server overhead vs the direct pipeline, and throughput with batching on and off.

Measured side by side in one run, on this machine:

1. the direct pipeline at batch 1 (``pipeline.run([spec])``, median of ``--repeats``);
2. a real ``dreamlite serve`` process (uvicorn on 127.0.0.1) with batching ON: median end-to-end time of
   sequential sync ``POST /v1/generate`` requests (→ overhead ratio), then images/s at concurrency 1, 4, 8;
3. the same server with batching OFF (batch size 1): images/s at concurrency 1, 4, 8.

Every request uses its own prompt (no prompt-cache hits) and seed. Results are printed as a table and
written as JSON (default ``bench-results/bench_server.json``).

Usage::

    python tests/benchmarks/bench_server.py [--model DIR] [--size 256x256] [--requests 24] [--repeats 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "conformance" / "tiny-dreamlite-mobile"
CONCURRENCY = (1, 4, 8)


@dataclass
class Scenario:
    """One server configuration."""

    name: str
    batching: bool
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    images_per_s: dict[int, float] = field(default_factory=dict)
    mean_batch_size: dict[int, float] = field(default_factory=dict)
    e2e_median_s: float | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def direct_pipeline_s(model: Path, width: int, height: int, repeats: int) -> float:
    """Median seconds of one solo pipeline run (after two warm-up runs)."""
    from model_runtime import SampleSpec, load_pipeline

    pipeline = load_pipeline(model, backend="torch", dtype="float32")
    for i in range(2):
        pipeline.run([SampleSpec(task="generate", prompt=f"warm-up {i}", seed=i, width=width, height=height)])
    times = []
    for i in range(repeats):
        spec = SampleSpec(
            task="generate", prompt=f"direct prompt {i}", seed=1000 + i, width=width, height=height
        )
        t0 = time.perf_counter()
        pipeline.run([spec])
        times.append(time.perf_counter() - t0)
    pipeline.backend.close()
    return statistics.median(times)


class Server:
    """A ``dreamlite serve`` subprocess."""

    def __init__(self, model: Path, scenario: Scenario, warmup: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DREAMLITE_MODEL__WARMUP_SIZE": warmup,
            "DREAMLITE_BATCHING__ENABLED": str(scenario.batching).lower(),
            "DREAMLITE_BATCHING__MAX_BATCH_SIZE": str(scenario.max_batch_size),
            "DREAMLITE_BATCHING__MAX_WAIT_MS": str(scenario.max_wait_ms),
            "DREAMLITE_QUEUE__MAX_QUEUED_JOBS": "256",
            "DREAMLITE_LOG_LEVEL": "WARNING",
        }
        cmd = [sys.executable, "-m", "server", "--model", str(model), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during startup")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _request(client: httpx.AsyncClient, index: int, size: str, tag: str) -> int:
    body = {"prompt": f"{tag} prompt {index}", "seed": index, "size": size, "output_format": "png"}
    response = await client.post("/v1/generate", json=body)
    response.raise_for_status()
    batch: int = response.json()["data"][0]["recipe"]["batch_size"]
    return batch


async def throughput(base: str, size: str, concurrency: int, total: int, tag: str) -> tuple[float, float]:
    """(images/s, mean batch size) for ``total`` requests with ``concurrency`` in flight."""
    counter = iter(range(total))
    batches: list[int] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            batches.append(await _request(client, i, size, f"{tag}-c{concurrency}"))

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        await _request(client, 10_000 + concurrency, size, f"{tag}-warm")  # this size's kernels warm
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return total / wall, statistics.mean(batches)


def sequential_e2e_s(base: str, size: str, repeats: int) -> float:
    times = []
    with httpx.Client(base_url=base, timeout=600) as client:
        for i in range(repeats + 1):
            body = {"prompt": f"sequential prompt {i}", "seed": 5000 + i, "size": size}
            t0 = time.perf_counter()
            client.post("/v1/generate", json=body).raise_for_status()
            if i:  # the first request warms this size
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=TINY)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    parser.add_argument("--repeats", type=int, default=8, help="sequential requests for the overhead ratio")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench_server.json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    started = time.time()
    direct = direct_pipeline_s(args.model, width, height, args.repeats)
    print(f"direct pipeline done: {direct * 1000:.1f} ms", file=sys.stderr, flush=True)
    scenarios = [Scenario("batching_on", batching=True), Scenario("batching_off", batching=False)]
    for scenario in scenarios:
        server = Server(args.model, scenario, warmup=args.size)
        try:
            server.wait_ready()
            if scenario.batching:
                scenario.e2e_median_s = sequential_e2e_s(server.base, args.size, args.repeats)
            for c in CONCURRENCY:
                ips, mean_batch = asyncio.run(
                    throughput(server.base, args.size, c, args.requests, scenario.name)
                )
                scenario.images_per_s[c] = ips
                scenario.mean_batch_size[c] = mean_batch
                print(
                    f"{scenario.name} c={c}: {ips:.2f} img/s, mean batch {mean_batch:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            server.stop()

    on, off = scenarios
    assert on.e2e_median_s is not None
    overhead = on.e2e_median_s / direct
    import torch

    result: dict[str, Any] = {
        "benchmark": "bench_server",
        "commit": _commit(),
        "started_at": started,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "size": args.size,
        "requests_per_level": args.requests,
        "direct_pipeline_batch1_median_s": direct,
        "server_e2e_batch1_median_s": on.e2e_median_s,
        "overhead_ratio": overhead,
        "scenarios": [asdict(s) for s in scenarios],
        "speedup_batching": {c: on.images_per_s[c] / off.images_per_s[c] for c in CONCURRENCY},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"model={result['model']} size={args.size} cpus={os.cpu_count()} torch={torch.__version__}")
    print(f"direct pipeline, batch 1 : {direct * 1000:8.1f} ms (median of {args.repeats})")
    print(f"server end-to-end, batch 1: {on.e2e_median_s * 1000:8.1f} ms  → overhead ratio {overhead:.3f}")
    print(f"{'concurrency':>11} | {'batching on img/s':>17} {'(mean batch)':>12} | ", end="")
    print(f"{'batching off img/s':>18} | speedup")
    for c in CONCURRENCY:
        on_part = f"{c:>11} | {on.images_per_s[c]:17.2f} {on.mean_batch_size[c]:12.2f}"
        print(f"{on_part} | {off.images_per_s[c]:18.2f} | {result['speedup_batching'][c]:6.2f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
