"""Export stage ⑤ (QNN context binaries) and the emulator side of stage ⑥, one target per process.

The HTP emulator's SoC setting is process-global, so the exporter runs this module once per target as
``python -m model_runtime.export.qnn_worker JOB.json``:

* ``compile`` — for each graph named in the job (w8a16 QDQ graphs; fp32 graphs for fp16 contexts): create
  a QNN session with ``ep.context_enable=1`` (writes
  ``<name>_ctx.onnx`` + ``<name>_ctx_qnn.bin``), reload the context model exactly as the backend will, and
  run the parity feeds through it (outputs saved for the parent to score);
* ``pipeline`` — load the bundle with the ``qnn`` backend (the job's context precision) and run the held-out
  generate and edit.

Results go to the JSON/NPZ paths named in the job; nothing is returned through stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Feeds = dict[str, NDArray[np.float32]]


def save_feeds(path: Path, feeds: list[Feeds]) -> None:
    """A list of feed dicts as one ``.npz`` (keys ``<i>/<name>``)."""
    np.savez(path, **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})  # type: ignore[arg-type]


def load_feeds(path: Path) -> list[Feeds]:
    """Inverse of :func:`save_feeds`."""
    items: dict[int, Feeds] = {}
    with np.load(path) as data:
        for key in data.files:
            i, name = key.split("/", 1)
            items.setdefault(int(i), {})[name] = np.asarray(data[key])
    return [items[i] for i in sorted(items)]


def _compile(job: dict[str, Any]) -> dict[str, Any]:
    from model_runtime.backends.qnn_backend import AgreedSession, claim_target, create_qnn_session

    claim_target(job["target"])
    options: dict[str, str] = job["provider_options"]
    results = []
    for item in job["contexts"]:
        src, dst = Path(item["src"]), Path(item["dst"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        session = create_qnn_session(src, options, context_out=dst, embed_mode=int(job.get("embed_mode", 0)))
        compile_s = time.perf_counter() - t0
        del session
        t0 = time.perf_counter()
        stats = {"calls": 0, "runs": 0, "disagreeing_calls": 0}
        agreement = int(job.get("agreement", 2))
        session = AgreedSession(create_qnn_session(dst, options), agreement, 3 * agreement + 4, stats)
        load_s = time.perf_counter() - t0
        run_s: list[float] = []
        if item.get("feeds"):
            outputs = []
            for feeds in load_feeds(Path(item["feeds"])):
                t0 = time.perf_counter()
                outputs.append(np.asarray(session.run(None, feeds)[0], dtype=np.float32))
                run_s.append(time.perf_counter() - t0)
            np.savez(item["out"], *outputs)
        binaries = sorted(p.name for p in dst.parent.glob(dst.stem + "*.bin"))
        results.append(
            {
                "dst": str(dst),
                "binaries": binaries,
                "compile_s": compile_s,
                "load_s": load_s,
                "run_s": run_s,  # per agreed call (several emulator runs each)
                "single_run_s": sum(run_s) / stats["runs"] if stats["runs"] else 0.0,
                "emulator_runs": stats,
            }
        )
    return {"contexts": results}


def _pipeline(job: dict[str, Any]) -> dict[str, Any]:
    from model_runtime.backends.qnn_backend import load_qnn_backend
    from model_runtime.export.parity import run_e2e
    from model_runtime.pipeline import Pipeline

    t0 = time.perf_counter()
    backend = load_qnn_backend(
        job["bundle"],
        target=job["target"],
        precision=job.get("precision"),  # None: the backend's default (w8a16)
        fallback=job.get("fallback", "none"),
    )
    load_s = time.perf_counter() - t0
    pipeline = Pipeline(backend)
    arrays: dict[str, NDArray[Any]] = {}
    timings: dict[str, float] = {}
    for w, h in job["sizes"]:
        t0 = time.perf_counter()
        result = run_e2e(pipeline, (w, h), int(job["steps"]))
        timings[f"{w}x{h}"] = time.perf_counter() - t0
        for task, values in result.items():
            for name, value in values.items():
                arrays[f"{w}x{h}/{task}/{name}"] = value
    np.savez(job["out"], **arrays)  # type: ignore[arg-type]
    return {
        "load_s": load_s,
        "run_s": timings,
        "provider": backend.info.provider,
        "emulator_runs": dict(backend.emulator_runs),
    }


def run_job(job: dict[str, Any], workdir: Path, timeout_s: float | None = None) -> dict[str, Any]:
    """Run a job in a fresh Python process and return its result (raises with the worker's stderr)."""
    job_path = workdir / f"qnn-job-{job['kind']}-{job['target']}.json"
    result_path = job_path.with_suffix(".result.json")
    job_path.write_text(json.dumps({**job, "result": str(result_path)}), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "model_runtime.export.qnn_worker", str(job_path)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0 or not result_path.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"QNN worker ({job['kind']}, {job['target']}) failed with status {proc.returncode}:\n{tail}"
        )
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    return result


def main(argv: list[str]) -> int:
    """Entry point: ``python -m model_runtime.export.qnn_worker JOB.json``."""
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result = _compile(job) if job["kind"] == "compile" else _pipeline(job)
    Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main(sys.argv[1:]))
