"""Stage ④ loading: files shipped inside the package (the embedded default model, golden vectors)."""

from __future__ import annotations

from pathlib import Path

from model_runtime.errors import ModelLoadError

ASSETS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_NAME = "dreamlite-nano"


def default_model_dir() -> Path:
    """The embedded default model folder (``model_runtime/assets/dreamlite-nano``).

    Raises:
        ModelLoadError: When the package was installed without it.
    """
    path = ASSETS_DIR / DEFAULT_MODEL_NAME
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            str(path), "the embedded default model is not installed here; pass a model folder with --model"
        )
    return path
