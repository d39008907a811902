"""Import boundaries: the runtime core loads no framework; only the chosen backend does."""

from __future__ import annotations

import subprocess
import sys


def test_core_import_is_framework_free() -> None:
    code = (
        "import sys, model_runtime, model_runtime.pipeline, model_runtime.recipe, model_runtime.noise_dln1;"
        "heavy = ('torch', 'diffusers', 'transformers', 'onnxruntime', 'fastapi', 'server');"
        "bad = [m for m in heavy if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core import pulled in: {out.stdout.strip()}"
