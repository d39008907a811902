"""Run the tiny bundle's cases on the qnn backend in a fresh process; print digests as one JSON line.

``python -m tests.unit.model_runtime.backends.qnn_case_runner BUNDLE TARGET OUT.npz``
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from model_runtime import load_pipeline
from tests.unit.model_runtime.backends.parity_cases import digest, run_cases


def main(argv: list[str]) -> int:
    bundle, target, out = argv
    pipeline = load_pipeline(bundle, backend="qnn", target=target)
    t0 = time.perf_counter()
    result = run_cases(pipeline)
    elapsed = time.perf_counter() - t0
    np.savez(out, **{f"{t}/{n}": v for t, vals in result.items() for n, v in vals.items()})
    info = pipeline.backend.info
    summary = {
        "digest": digest(result),
        "provider": info.provider,
        "run_s": elapsed,
        "emulator_runs": info.details.get("emulator_runs"),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
