"""A lead for the edit gap: the ``align`` objective run on a *finished* student, then its edits scored.

``align`` (``model_runtime/train/align.py``) trains the VLM so that a frozen UNet predicts, from an edit
request, what it predicts from the target scene's caption. In the recipe it runs before edit training, on the
T2I UNet. Here it runs on the finished 4-step student's own UNet (frozen; only the text encoder learns), for a
few steps, and ``nano_edit_mode_probe``'s arms score the held-out edits before and after: if edits rise toward
the text path's score, an ``align`` pass after ``joint`` is a candidate stage for the recipe.

    python scripts/nano_post_align_probe.py [--model DIR] [--steps 150] [--out F]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _nano_probe import record_arm, repo_path, score_edits, write_report
from nano_edit_mode_probe import draw

from model_runtime.train import shapes_eval, world
from model_runtime.train.align import AlignConfig, AlignStage
from model_runtime.train.diffusion import Example, NanoModels, edit_example


def caption_of(edit: Any) -> str:
    """The target scene's caption, objects in their scene order."""
    return str(edit.target.caption(list(range(len(edit.target.objects)))))


def score(models: Any, arm: str, batch: int = 48) -> tuple[list[str], list[dict[str, float]]]:
    """Edit scores of the 144 held-out edits (seed 1000) in one probe arm (``edit`` or ``caption``)."""
    items = list(shapes_eval.edit_items("heldout"))
    scores: list[dict[str, float]] = []
    for k in range(0, len(items), batch):
        edits = [it.edit for it in items[k : k + batch]]
        if arm == "edit":
            ex = [Example("edit", e.instruction, None, world.render(e.source)) for e in edits]
        else:
            ex = [Example("generate", caption_of(e), None) for e in edits]
        images = draw(models, ex, [1000] * len(ex), 4, False, None)
        scores += score_edits(edits, images)
    return [it.edit.kind for it in items], scores


def main() -> None:
    from model_runtime.assets import default_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or default_model_dir()
    models = NanoModels.from_folder(folder)
    report: dict[str, Any] = {"model": repo_path(folder), "steps": args.steps, "lr": args.lr, "arms": {}}
    for arm in ("edit", "caption"):
        t0 = time.perf_counter()
        record_arm(report, f"before_{arm}", *score(models, arm), time.perf_counter() - t0)
    stage = AlignStage(models, AlignConfig(lr=args.lr), args.steps, seed=7)
    held = [edit_example(it.edit, caption_of(it.edit)) for it in shapes_eval.edit_items("heldout")]
    report["heldout_gap_before"] = stage.heldout_gap(held)
    t0 = time.perf_counter()
    losses = [stage.step(i)["loss"] for i in range(args.steps)]
    report["train_seconds"] = round(time.perf_counter() - t0, 1)
    report["losses_every_10"] = [round(v, 4) for v in losses[::10]]
    report["heldout_gap_after"] = stage.heldout_gap(held)
    print(json.dumps({k: report[k] for k in ("heldout_gap_before", "heldout_gap_after", "train_seconds")}))
    models.text_encoder.eval()
    for arm in ("edit", "caption"):
        t0 = time.perf_counter()
        record_arm(report, f"after_{arm}", *score(models, arm), time.perf_counter() - t0)
    if args.out is not None:
        write_report(args.out, report)


if __name__ == "__main__":
    main()
