"""Where a shipped-model edit goes wrong: the VLM's features or the UNet's use of the condition latent.

The shipped 4-step student samples every held-out ShapesEval edit (unguided, its 4-step schedule, torch
noise per seed) in four arms, and ShapesEval scores the images as edits:

* ``edit``: the edit request's features (source image + instruction) and the source latent in the condition
  half (what the pipeline does);
* ``edit_zero_cond``: the same features with an all-zero condition half (only the VLM's reading);
* ``edit_no_vision`` / ``edit_no_vision_zero_cond``: the edit request's features with the vision tokens masked
  out of the UNet's cross-attention (only the instruction and the template's closing tokens, which attend to
  the image inside the causal VLM, are seen);
* ``caption``: the target scene's caption as a generate request, zero condition (the text path's ceiling);
* ``caption_src``: the target caption's features with the source latent in the condition half.

An oracle arm, not in the default set (``--arms edit_no_subject``): the edit request with the image tokens
whose cells cover the edited object's slot in the *source* masked out (the answer decides which; for ``add``
and ``background`` nothing is masked). Scored high, it says that the features hold the answer and only the
source's own description of the changed object stands in the way.

``edit`` ≈ ``edit_zero_cond`` says the condition latent is not used; ``edit_zero_cond`` far below
``caption`` says the features are the gap.

    python scripts/nano_edit_mode_probe.py [--model DIR] [--out docs/results/nano/edit-mode-probe.json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _nano_probe import record_arm, repo_path, score_edits, write_report
from numpy.typing import NDArray

from model_runtime.train import shapes_eval, world
from model_runtime.train.diffusion import (
    LATENT,
    Example,
    NanoModels,
    conditions,
    guided_velocity,
    schedule_sigmas,
)
from model_runtime.train.text_features import TextRequest

ARMS = ("edit", "edit_zero_cond", "edit_no_vision", "edit_no_vision_zero_cond", "caption", "caption_src")


@torch.no_grad()
def draw(
    models: NanoModels,
    examples: list[Example],
    seeds: list[int],
    steps: int,
    zero: bool,
    src: NDArray[np.uint8] | None,
    hide_vision: bool = False,
    hide_rows: Callable[[int], torch.Tensor] | None = None,
    text: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> NDArray[np.uint8]:
    """Unguided Euler samples; ``zero`` empties the condition half; ``src`` overrides it; ``hide_vision``
    masks the image tokens out of the features, ``hide_rows(L)`` (``(B, L)`` bool) any rows; ``text``
    (``(B, L, D)`` features, ``(B, L)`` mask) replaces the examples' own features. ``(B, 128, 128, 3)``."""
    c = conditions(models, examples, False)
    if text is not None:
        c.text, c.mask = text
    if hide_vision:
        c.mask = c.mask * ~vision_rows(models, examples, c.mask.shape[1])
    if hide_rows is not None:
        c.mask = c.mask * ~hide_rows(c.mask.shape[1])
    if zero:
        c.cond.zero_()
    if src is not None:
        c.cond = conditions(models, [Example("edit", "", None, s) for s in src], False).cond
    sig = schedule_sigmas(models, steps)
    x = torch.cat(
        [torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )  # (B, 4, h, w)
    for k in range(steps):
        v = guided_velocity(models.unet, x, sig[k].expand(x.shape[0]), c, None)  # (B, 4, h, w)
        x = x + (sig[k + 1] - sig[k]) * v
    y = models.vae.decode(x).sample  # (B, 3, H, W)
    y = ((y / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.asarray(y.permute(0, 2, 3, 1).numpy(), dtype=np.uint8)


def vision_rows(models: NanoModels, examples: list[Example], length: int) -> torch.Tensor:
    """``(B, L)`` bool: the kept feature rows that are image tokens (or their start/end markers)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(models.featurizer.tokenizer_file))
    marks = {tok.token_to_id(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")}
    out = torch.zeros((len(examples), length), dtype=torch.bool)
    for b, e in enumerate(examples):
        ids = models.featurizer.kept_ids(TextRequest("edit", e.prompt, e.source))
        out[b, : len(ids)] = torch.tensor([i in marks for i in ids])
    return out


def subject_rows(models: NanoModels, edits: list[world.Edit], length: int) -> torch.Tensor:
    """``(B, L)`` bool: the image-token rows whose cells cover the edited object's slot in the source."""
    from model_runtime.train.text_pretrain import cell_slots

    cells = cell_slots(models.featurizer.vlm_size[0], models.featurizer.merge)
    pad = models.featurizer.image_pad_id()
    out = torch.zeros((len(edits), length), dtype=torch.bool)
    for b, e in enumerate(edits):
        if e.subject is None or e.kind == "add":
            continue
        ids = models.featurizer.kept_ids(TextRequest("edit", e.instruction, world.render(e.source)))
        pads = [k for k, t in enumerate(ids) if t == pad]
        for k, slot in enumerate(cells):
            if slot == e.subject.position:
                out[b, pads[k]] = True
    return out


def main() -> None:
    from model_runtime.assets import default_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a student folder (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=1, help="seeds per edit (1000, 1001, …)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated; also the oracle edit_no_subject")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or default_model_dir()
    models = NanoModels.from_folder(folder)
    items = list(shapes_eval.edit_items("heldout"))
    jobs = [(it, 1000 + s) for s in range(args.seeds) for it in items]
    report: dict[str, Any] = {
        "model": repo_path(folder),
        "steps": args.steps,
        "samples": len(jobs),
        "arms": {},
    }
    for arm in args.arms.split(","):
        t0 = time.perf_counter()
        scores: list[dict[str, float]] = []
        for k in range(0, len(jobs), args.batch):
            part = jobs[k : k + args.batch]
            edits = [it.edit for it, _ in part]
            sources = [world.render(e.source) for e in edits]
            if arm.startswith("edit"):
                ex = [Example("edit", e.instruction, None, s) for e, s in zip(edits, sources, strict=True)]
            else:
                ex = [
                    Example("generate", e.target.caption(list(range(len(e.target.objects)))), None)
                    for e in edits
                ]
            images = draw(
                models,
                ex,
                [s for _, s in part],
                args.steps,
                arm.endswith("zero_cond"),
                np.stack(sources) if arm == "caption_src" else None,
                "no_vision" in arm,
                (lambda n, e=edits: subject_rows(models, e, n)) if arm == "edit_no_subject" else None,
            )
            scores += score_edits(edits, images)
        record_arm(report, arm, [it.edit.kind for it, _ in jobs], scores, time.perf_counter() - t0)
    if args.out is not None:
        write_report(args.out, report)


if __name__ == "__main__":
    main()
