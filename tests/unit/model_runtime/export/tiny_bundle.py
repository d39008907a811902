"""Build (once) the tiny conformance model's device bundle that the export and backend tests share.

The bundle is made with the real command (``python -m model_runtime.export``, the handler ``dreamlite
export`` runs, in process) at one small working size,
with all three precisions and sm8650 context binaries
(w8a16 and fp16). It is cached under pytest's cache folder, keyed by
the content of every ``model_runtime`` source file, the fixture model and the library versions, so a
rerun with unchanged code reuses it; any code change rebuilds it. A file lock makes concurrent test
processes build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[4]
TINY_MODEL = ROOT / "tests" / "fixtures" / "conformance" / "tiny-dreamlite-mobile"
SIZE = (64, 64)
STEPS = 2
SEQ_LEN = 128
EXPORT_ARGS = [
    "--model",
    str(TINY_MODEL),
    "--size",
    f"{SIZE[0]}x{SIZE[1]}",
    "--seq-len",
    str(SEQ_LEN),
    "--steps",
    str(STEPS),
    "--precision",
    "fp32,fp16,w8a16",
    "--targets",
    "sm8650",
    "--qnn-precision",
    "w8a16,fp16",
    "--calibration-prompts",
    "2",
    "--parity",
    "graphs",
    "--parity-calibration",
    "2",
]


def _key() -> str:
    import onnxruntime
    import torch

    digest = hashlib.sha256(json.dumps([EXPORT_ARGS, onnxruntime.__version__, torch.__version__]).encode())
    for base in (ROOT / "model_runtime", TINY_MODEL):
        for path in sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            if base.name == "model_runtime" and path.suffix != ".py":
                continue
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def tiny_bundle(cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The bundle folder and the export command's JSON summary (built on first use)."""
    import contextlib
    import io

    from model_runtime.export.__main__ import main

    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _key()
    bundle = cache_dir / f"tiny-{key}"
    summary_path = cache_dir / f"tiny-{key}.json"
    with (cache_dir / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not summary_path.is_file():
            for old in cache_dir.glob("tiny-*"):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                status = main([*EXPORT_ARGS, "--out", str(bundle)])
            if status != 0:
                raise RuntimeError(f"dreamlite export failed with status {status}")
            summary_path.write_text(out.getvalue().strip().splitlines()[-1], encoding="utf-8")
    return bundle, json.loads(summary_path.read_text(encoding="utf-8"))
