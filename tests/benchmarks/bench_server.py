"""Benchmark: server overhead vs the direct pipeline, and throughput with batching on and off.

Measured side by side in one run, on this machine, with two real ``dreamlite serve`` processes (uvicorn on
127.0.0.1) up at the same time — batching ON (max_batch_size 8, max_wait_ms 10) and OFF (batch size 1):

1. overhead: ``--repeats`` pairs, each = one direct ``pipeline.run([spec])`` in this process, then one
   sequential sync ``POST /v1/generate`` to the batching-ON server (batch 1); the overhead ratio is the
   median of the per-pair ratios server / direct;
2. throughput: images/s at concurrency 1, 4 and 8 against each server, interleaved (ON, OFF, ON, OFF …) for
   ``--rounds`` rounds so that a noisy neighbour hits both alike; images/s = images / wall time summed
   over the rounds.

Every request uses its own prompt (no prompt-cache hits) and seed. Results are printed as a table and
written as JSON (default ``bench-results/bench_server.json``).

Usage::

    python tests/benchmarks/bench_server.py [--model DIR] [--size 256x256] [--requests 12] [--repeats 8]
                                            [--rounds 2]
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
    images: dict[int, int] = field(default_factory=dict)
    wall_s: dict[int, float] = field(default_factory=dict)
    batches: dict[int, list[int]] = field(default_factory=dict)


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


def load_direct(model: Path, width: int, height: int) -> Any:
    """The pipeline for direct runs (warmed at this size)."""
    from model_runtime import SampleSpec, load_pipeline

    pipeline = load_pipeline(model, backend="torch", dtype="float32")
    for i in range(2):
        pipeline.run([SampleSpec(task="generate", prompt=f"warm-up {i}", seed=i, width=width, height=height)])
    return pipeline


def direct_once(pipeline: Any, index: int, width: int, height: int) -> float:
    """Seconds of one solo pipeline run."""
    from model_runtime import SampleSpec

    spec = SampleSpec(
        task="generate", prompt=f"direct prompt {index}", seed=1000 + index, width=width, height=height
    )
    t0 = time.perf_counter()
    pipeline.run([spec])
    return time.perf_counter() - t0


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


async def throughput(base: str, size: str, concurrency: int, total: int, tag: str) -> tuple[float, list[int]]:
    """(wall seconds, batch size of every image) for ``total`` requests with ``concurrency`` in flight."""
    counter = iter(range(total))
    batches: list[int] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            batches.append(await _request(client, i, size, f"{tag}-c{concurrency}"))

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return wall, batches


def server_once(base: str, size: str, index: int) -> float:
    """Seconds of one sequential sync request."""
    body = {"prompt": f"sequential prompt {index}", "seed": 5000 + index, "size": size}
    t0 = time.perf_counter()
    httpx.post(f"{base}/v1/generate", json=body, timeout=600).raise_for_status()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=TINY)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--requests", type=int, default=12, help="requests per concurrency level and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the throughput runs")
    parser.add_argument("--repeats", type=int, default=8, help="sequential requests for the overhead ratio")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bench_server.json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    started = time.time()
    scenarios = [Scenario("batching_on", batching=True), Scenario("batching_off", batching=False)]
    servers = [Server(args.model, scenario, warmup=args.size) for scenario in scenarios]
    try:
        for server in servers:
            server.wait_ready()
        for server in servers:  # one request warms the serving path at this size
            server_once(server.base, args.size, 9_999)
        pipeline = load_direct(args.model, width, height)
        direct_s, server_s = [], []
        for i in range(args.repeats):
            direct_s.append(direct_once(pipeline, i, width, height))
            server_s.append(server_once(servers[0].base, args.size, i))
        pipeline.backend.close()
        del pipeline
        ratios = [s_ / d_ for s_, d_ in zip(server_s, direct_s, strict=True)]
        print(f"overhead pairs done: {statistics.median(ratios):.3f}", file=sys.stderr, flush=True)
        for round_index in range(args.rounds):
            for c in CONCURRENCY:
                for scenario, server in zip(scenarios, servers, strict=True):
                    tag = f"{scenario.name}-r{round_index}"
                    wall, batches = asyncio.run(throughput(server.base, args.size, c, args.requests, tag))
                    scenario.images[c] = scenario.images.get(c, 0) + len(batches)
                    scenario.wall_s[c] = scenario.wall_s.get(c, 0.0) + wall
                    scenario.batches.setdefault(c, []).extend(batches)
                    print(
                        f"round {round_index} {scenario.name} c={c}: {len(batches) / wall:.2f} img/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
    for scenario in scenarios:
        for c in CONCURRENCY:
            scenario.images_per_s[c] = scenario.images[c] / scenario.wall_s[c]
            scenario.mean_batch_size[c] = statistics.mean(scenario.batches[c])
    on, off = scenarios
    overhead = statistics.median(ratios)
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
        "direct_pipeline_batch1_median_s": statistics.median(direct_s),
        "server_e2e_batch1_median_s": statistics.median(server_s),
        "overhead_ratio": overhead,
        "overhead_pairs": [
            {"direct_s": d_, "server_s": s_} for d_, s_ in zip(direct_s, server_s, strict=True)
        ],
        "rounds": args.rounds,
        "scenarios": [asdict(s) for s in scenarios],
        "speedup_batching": {c: on.images_per_s[c] / off.images_per_s[c] for c in CONCURRENCY},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"model={result['model']} size={args.size} cpus={os.cpu_count()} torch={torch.__version__}")
    print(
        f"direct pipeline, batch 1 : {statistics.median(direct_s) * 1000:8.1f} ms (median of {args.repeats})"
    )
    print(
        f"server end-to-end, batch 1: {statistics.median(server_s) * 1000:8.1f} ms (median of {args.repeats})"
    )
    print(f"overhead ratio (median of paired server/direct): {overhead:.3f}")
    print(f"{'concurrency':>11} | {'batching on img/s':>17} {'(mean batch)':>12} | ", end="")
    print(f"{'batching off img/s':>18} | speedup")
    for c in CONCURRENCY:
        on_part = f"{c:>11} | {on.images_per_s[c]:17.2f} {on.mean_batch_size[c]:12.2f}"
        print(f"{on_part} | {off.images_per_s[c]:18.2f} | {result['speedup_batching'][c]:6.2f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
