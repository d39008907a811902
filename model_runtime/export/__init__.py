"""Export: DreamLite folder → device bundle (ONNX fp32/fp16, QDQ w8a16, QNN context binaries, manifest).

Run it as ``dreamlite export`` or ``python -m model_runtime.export``; the stages are listed in
:mod:`model_runtime.export.build`. Importing this package is light (no torch/onnx until a stage runs).
"""

from __future__ import annotations
