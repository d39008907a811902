"""Shared by the nano probes: the shipped dreamlite-nano components, a fixed held-out edit set, the report.

Imported by ``scripts/nano_*_probe.py`` (run as ``python scripts/<probe>.py``, so this folder is on the path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Shipped:
    """The shipped folder's components in float32, and the runtime-exact text stage."""

    vae: Any
    text_encoder: Any
    unet: Any
    featurizer: Any


def load_shipped(folder: Path | None = None) -> Shipped:
    """A model folder's (default: the embedded model's) VAE (frozen), text encoder, UNet and text stage."""
    from model_runtime.assets import default_model_dir
    from model_runtime.train.diffusion import NanoModels

    m = NanoModels.from_folder(folder or default_model_dir())
    return Shipped(m.vae, m.text_encoder, m.unet, m.featurizer)


def write_like(start: Path, out: Path, text_encoder: Any, unet: Any, vae: Any) -> None:
    """Write fine-tuned components as a model folder (float16, as shipped) with ``start``'s tokenizer and
    ``drop_idx``, so ``dreamlite eval shapes --model out`` serves it like the folder it came from."""
    from tokenizers import Tokenizer

    from model_runtime.train import configs
    from model_runtime.train.writer import write_folder

    info = json.loads((start / "dreamlite.json").read_text(encoding="utf-8"))
    write_folder(
        out,
        sizes=configs.NanoSizes(),
        tokenizer=Tokenizer.from_file(str(start / "tokenizer" / "tokenizer.json")),
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        drop=dict(info["drop_idx"]),
    )


def optimizer_step(opt: Any, params: Any, loss: Any, i: int, steps: int, lr: float) -> None:
    """One step of a probe's fine-tune: cosine learning rate (10 warm-up steps), backward, clip at 1, step."""
    import torch

    from model_runtime.train.loop import cosine_lr

    for g in opt.param_groups:
        g["lr"] = cosine_lr(i, steps, lr, 10)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def log_step(log: list[dict[str, Any]], i: int, steps: int, t0: float, **values: float) -> None:
    """Every 20th and the last step: append ``values`` (and the seconds since ``t0``) to ``log`` and print."""
    import time

    if i % 20 == 0 or i == steps - 1:
        row = {"step": i, "seconds": round(time.perf_counter() - t0, 1), **values}
        log.append(row)
        print(json.dumps(row), flush=True)


def held_out_edits(per_kind: int) -> list[Any]:
    """The first ``per_kind`` held-out ShapesEval edits of every kind, kind by kind."""
    from model_runtime.train import shapes_eval

    edits = [it.edit for it in shapes_eval.edit_items("heldout")]
    return [e for k in shapes_eval.EDIT_KINDS for e in [e for e in edits if e.kind == k][:per_kind]]


def score_edits(edits: list[Any], images: Any) -> list[dict[str, float]]:
    """ShapesEval's edit score of each image ``(B, 128, 128, 3)`` uint8 against its edit."""
    from model_runtime.train import shapes_eval

    return [shapes_eval.score_edit(e, shapes_eval.analyse(im)) for e, im in zip(edits, images, strict=True)]


def record_arm(
    report: dict[str, Any], arm: str, kinds: list[str], scores: list[dict[str, float]], seconds: float
) -> None:
    """Put one arm's :func:`edit_summary` into ``report["arms"]`` and print it."""
    row = edit_summary(kinds, scores, seconds)
    report["arms"][arm] = row
    print(arm, json.dumps(row), flush=True)


def edit_summary(kinds: list[str], scores: list[dict[str, float]], seconds: float) -> dict[str, Any]:
    """ShapesEval edit scores of one arm: overall, instruction, preserve (means) and per kind."""
    import numpy as np

    by_kind: dict[str, list[float]] = {}
    for kind, s in zip(kinds, scores, strict=True):
        by_kind.setdefault(kind, []).append(s["score"])
    return {
        "overall": float(np.mean([s["score"] for s in scores])),
        "instruction": float(np.mean([s["instruction"] for s in scores])),
        "preserve": float(np.mean([s["preserve"] for s in scores])),
        "by_kind": {k: float(np.mean(v)) for k, v in by_kind.items()},
        "seconds": round(seconds, 1),
    }


def repo_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (reports carry no machine's paths)."""
    root = Path(__file__).resolve().parent.parent
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def write_report(path: str | Path, results: dict[str, Any]) -> None:
    """Write a probe's results as indented JSON (creating the folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
