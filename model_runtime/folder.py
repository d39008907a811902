"""Stage ④ loading: the official DreamLite weight folder, validated, with its pipeline constants.

A DreamLite folder is what ``DreamLite{Mobile}Pipeline.save_pretrained`` writes (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``processor/``, ``scheduler/``). It is read as
shipped: nothing is converted or rewritten. Problems are reported with the path of the missing or bad file.

The folder may carry an optional ``dreamlite.json`` with the pipeline constants that the official code
hard-codes (template tokens to drop, sizes, steps). When it is absent the official constants of the
variant apply; the in-repo nano model uses it because its tokenizer and resolution differ.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from model_runtime.errors import ModelLoadError

Variant = Literal["mobile", "base"]

FOLDER_CONFIG_NAME = "dreamlite.json"
PIPELINE_CLASSES: dict[str, Variant] = {
    "DreamLiteMobilePipeline": "mobile",
    "DreamLitePipeline": "base",
}
_WEIGHT_NAMES = {
    "unet": (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.bin",
    ),
    "vae": (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.bin",
    ),
    "text_encoder": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
}
_CLASS_CHECKS = {
    "unet/config.json": ("_class_name", {"DreamLiteUNetModel"}),
    "vae/config.json": ("_class_name", {"AutoencoderTiny"}),
    "scheduler/scheduler_config.json": ("_class_name", {"FlowMatchEulerDiscreteScheduler"}),
    "text_encoder/config.json": ("model_type", {"qwen3_vl"}),
}


@dataclass(frozen=True, slots=True)
class FolderConfig:
    """Pipeline constants of one model folder (``dreamlite.json``, or the official defaults).

    Attributes:
        model_id: A short name for recipes and ``/v1/models``.
        variant: ``mobile`` (distilled, no guidance) or ``base`` (guided).
        drop_idx_generate: Template tokens dropped from the text features in generate mode (official 34).
        drop_idx_edit: Template tokens dropped in edit mode (official 64).
        default_size: Generate size (W, H) when the caller gives none.
        edit_working_size: Size (W, H) at which edits are computed (official mobile: 1024²).
        vlm_image_size: Size (W, H) of the edit source given to the vision-language encoder (mobile 256²).
        default_steps: Denoising steps when the caller gives none.
        size_multiple: Pixel sizes must be multiples of this (two ×2 down-samplings of an 8× latent → 32).
        min_size: Smallest allowed side in pixels.
        max_size: Largest allowed side in pixels.
        guidance_scale: Default text guidance (base only).
        image_guidance_scale: Default image guidance for edits (base only).
    """

    model_id: str
    variant: Variant = "mobile"
    drop_idx_generate: int = 34
    drop_idx_edit: int = 64
    default_size: tuple[int, int] = (1024, 1024)
    edit_working_size: tuple[int, int] = (1024, 1024)
    vlm_image_size: tuple[int, int] = (256, 256)
    default_steps: int = 4
    size_multiple: int = 32
    min_size: int = 64
    max_size: int = 2048
    guidance_scale: float = 0.0
    image_guidance_scale: float = 0.0

    @classmethod
    def official(cls, variant: Variant, model_id: str) -> FolderConfig:
        """The constants the official code hard-codes for ``variant``."""
        if variant == "mobile":
            return cls(model_id=model_id)
        return cls(
            model_id=model_id,
            variant="base",
            vlm_image_size=(512, 512),
            default_steps=28,
            guidance_scale=3.5,
            image_guidance_scale=1.0,
        )

    def with_overrides(self, data: dict[str, Any], path: str) -> FolderConfig:
        """Apply the keys of a ``dreamlite.json`` document."""
        known = {
            "format",
            "model_id",
            "variant",
            "drop_idx",
            "default_size",
            "edit_working_size",
            "vlm_image_size",
            "default_steps",
            "size_multiple",
            "min_size",
            "max_size",
            "guidance_scale",
            "image_guidance_scale",
            "description",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelLoadError(path, f"unknown keys {unknown}; known keys: {sorted(known)}")
        changes: dict[str, Any] = {}
        try:
            if "model_id" in data:
                changes["model_id"] = str(data["model_id"])
            if "variant" in data:
                if data["variant"] not in ("mobile", "base"):
                    raise ValueError("`variant` must be mobile or base")
                changes["variant"] = data["variant"]
            if "drop_idx" in data:
                changes["drop_idx_generate"] = int(data["drop_idx"]["generate"])
                changes["drop_idx_edit"] = int(data["drop_idx"]["edit"])
            for key in ("default_size", "edit_working_size", "vlm_image_size"):
                if key in data:
                    w, h = data[key]
                    changes[key] = (int(w), int(h))
            for key in ("default_steps", "size_multiple", "min_size", "max_size"):
                if key in data:
                    changes[key] = int(data[key])
            for key in ("guidance_scale", "image_guidance_scale"):
                if key in data:
                    changes[key] = float(data[key])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(path, f"bad value: {err}") from err
        return replace(self, **changes)


@dataclass
class ModelFolder:
    """A validated DreamLite folder.

    Build it with :func:`open_model_folder`; it checks every file the loaders will read.
    """

    root: Path
    model_index: dict[str, Any]
    config: FolderConfig
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    text_encoder_config: dict[str, Any]
    processor_config: dict[str, Any]
    _hash_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _weights_sha256: str | None = field(default=None, repr=False)

    @property
    def variant(self) -> Variant:
        """``mobile`` or ``base``."""
        return self.config.variant

    @property
    def tokenizer_file(self) -> Path:
        """The tokenizer used for the text encoder (``tokenizer/tokenizer.json``)."""
        return self.root / "tokenizer" / "tokenizer.json"

    @property
    def image_token_id(self) -> int:
        """Id of ``<|image_pad|>`` in the text encoder's vocabulary."""
        return int(self.text_encoder_config["image_token_id"])

    def weights_sha256(self) -> str:
        """SHA-256 over every file of the folder (sorted relative paths and their SHA-256).

        Computed once per instance (about 5 s for the 5 GB real model) and then cached.
        """
        with self._hash_lock:
            if self._weights_sha256 is None:
                self._weights_sha256 = hash_tree(self.root)
            return self._weights_sha256


def hash_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(4 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path) -> str:
    """SHA-256 of a folder: the hash of one ``<relative path> <file sha256>`` line per file, sorted."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        lines.append(f"{rel} {hash_file(path)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _read_json(root: Path, rel: str) -> dict[str, Any]:
    path = root / rel
    if not path.is_file():
        raise ModelLoadError(str(path), "missing file (required by the official DreamLite folder layout)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(str(path), f"not readable JSON ({err})") from err
    if not isinstance(data, dict):
        raise ModelLoadError(str(path), "must hold a JSON object")
    return data


def _require_weights(root: Path, component: str) -> None:
    names = _WEIGHT_NAMES[component]
    if not any((root / component / name).is_file() for name in names):
        raise ModelLoadError(
            str(root / component / names[0]),
            f"missing weights for `{component}` (looked for {', '.join(names)})",
        )


def open_model_folder(path: str | Path) -> ModelFolder:
    """Validate a DreamLite folder and read its configs.

    Args:
        path: The folder (``model_index.json`` at its root).

    Returns:
        The validated folder.

    Raises:
        ModelLoadError: A file is missing, unreadable or of the wrong kind; the message names it.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ModelLoadError(str(root), "model folder does not exist")
    if not root.is_dir():
        raise ModelLoadError(str(root), "is not a folder (expected a DreamLite model folder)")
    model_index = _read_json(root, "model_index.json")
    class_name = model_index.get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise ModelLoadError(
            str(root / "model_index.json"),
            f"`_class_name` must be one of {sorted(PIPELINE_CLASSES)}; given {class_name!r}",
        )
    for component in ("unet", "vae", "text_encoder", "tokenizer", "processor", "scheduler"):
        if component not in model_index:
            raise ModelLoadError(str(root / "model_index.json"), f"no `{component}` component listed")
        if not (root / component).is_dir():
            raise ModelLoadError(str(root / component), "missing component folder")
    configs = {rel: _read_json(root, rel) for rel in _CLASS_CHECKS}
    for rel, (key, allowed) in _CLASS_CHECKS.items():
        if configs[rel].get(key) not in allowed:
            raise ModelLoadError(
                str(root / rel), f"`{key}` must be one of {sorted(allowed)}; given {configs[rel].get(key)!r}"
            )
    for component in _WEIGHT_NAMES:
        _require_weights(root, component)
    if not (root / "tokenizer" / "tokenizer.json").is_file():
        raise ModelLoadError(str(root / "tokenizer" / "tokenizer.json"), "missing tokenizer file")
    processor_config = _read_json(root, "processor/preprocessor_config.json")

    variant = PIPELINE_CLASSES[str(class_name)]
    config = FolderConfig.official(variant, model_id=root.resolve().name)
    extra = root / FOLDER_CONFIG_NAME
    if extra.is_file():
        config = config.with_overrides(_read_json(root, FOLDER_CONFIG_NAME), str(extra))
    return ModelFolder(
        root=root,
        model_index=model_index,
        config=config,
        unet_config=configs["unet/config.json"],
        vae_config=configs["vae/config.json"],
        scheduler_config=configs["scheduler/scheduler_config.json"],
        text_encoder_config=configs["text_encoder/config.json"],
        processor_config=processor_config,
    )
