"""Stage ④ backends: one contract (:mod:`.base`), one module per framework, chosen by name.

Each entry imports its framework lazily, so ``import model_runtime`` stays light and a machine without
onnxruntime can still serve the torch backend.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from model_runtime.backends.base import Backend, BackendInfo, ModelSpec, TextEncoderInput
from model_runtime.errors import InvalidInputError

BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("model_runtime.backends.torch_backend", "load_torch_backend"),
    "onnx": ("model_runtime.backends.onnx_backend", "load_onnx_backend"),
    "qnn": ("model_runtime.backends.qnn_backend", "load_qnn_backend"),
}


def create_backend(name: str, source: str | Path, **options: Any) -> Backend:
    """Load a model on a backend.

    Args:
        name: ``torch`` (source = an official weight folder), ``onnx`` or ``qnn`` (source = a bundle).
        source: Folder or bundle path.
        **options: Backend options (``device``, ``dtype``, ``target``, ``threads`` …).

    Returns:
        The loaded backend.

    Raises:
        InvalidInputError: Unknown backend name.
    """
    if name not in BACKENDS:
        raise InvalidInputError.one_of("backend", sorted(BACKENDS), name)
    module_name, factory_name = BACKENDS[name]
    factory: Callable[..., Backend] = getattr(import_module(module_name), factory_name)
    return factory(source, **options)


__all__ = ["BACKENDS", "Backend", "BackendInfo", "ModelSpec", "TextEncoderInput", "create_backend"]
