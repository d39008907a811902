"""Would edits work if the edit request's closing tokens said the *whole edited scene* in caption language?

In a caption the UNet finds each object at the position word that closes its phrase ("… red circle on the
*left*") and the background at its colour word ("on a *white* background"). An edit request's image tokens
describe the source (the causal VLM reads them before the instruction), and the UNet draws every description
it finds, so where the instruction contradicts the source (colour, shape, move, remove) the source wins
(docs/nano.md, "Reward fine-tuning and caption-language tokens"). This probe asks for the other extreme:

* the last ``SCENE_ROWS`` kept tokens of the edit request (the instruction's last word and the template's
  closing ``<|im_end|> \\n <|im_start|> assistant \\n``: the only tokens that see the image *and* the whole
  instruction) carry the target scene, one per slot (``world.POSITIONS`` order) and one for the background,
  each the frozen encoder's state of that word in the target's caption (objects in slot order);
* every other token of the edit request (the image tokens, the template's diptych sentence, the
  instruction's first words), and the row of a slot the target leaves empty, take a *neutral* state: the
  frozen state of the caption template's first kept token (``[Generate``), which is the same in every
  caption and so says nothing to the UNet.

``--oracle`` builds exactly those features from the answer and samples the held-out edits with the shipped
student (no training): the ceiling of the objective. Without it the probe trains only the text encoder
towards those targets (caption features anchored where the frozen encoder puts them, so generation keeps
its features), writes the folder, and ``dreamlite eval shapes --model OUT`` scores it.

    python scripts/nano_scene_token_probe.py --oracle [--seeds 1]
    python scripts/nano_scene_token_probe.py --out runs/scene-a --steps 2500 --lr 1e-3 [--objects one]
    python scripts/nano_scene_token_probe.py --diagnose runs/scene-a [--objects one] [--out F]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _nano_probe import log_step, record_arm, repo_path, score_edits, write_like, write_report
from nano_edit_mode_probe import draw

from model_runtime.assets import default_model_dir
from model_runtime.train import shapes_eval, world
from model_runtime.train.diffusion import (
    Example,
    NanoModels,
)
from model_runtime.train.scene import (
    SCENE_ROWS,
    SceneConfig,
    SceneStage,
    SceneTargets,
    changed_slots,
    edit_lengths,
    edit_requests,
)


def sample(models: NanoModels, edits: list[world.Edit], text: torch.Tensor | None, seeds: list[int]) -> Any:
    """4-step unguided student samples of edits, with the source latent, from ``text`` features (None:
    the edit request's own). ``(B, 128, 128, 3)`` uint8."""
    ex = [Example("edit", e.instruction, None, world.render(e.source)) for e in edits]
    feats = None
    if text is not None:
        mask = torch.zeros(text.shape[:2], dtype=torch.int64)  # (B, L) 1 = real row
        for b, n in enumerate(edit_lengths(models.featurizer, edits)):
            mask[b, :n] = 1
        feats = (text, mask)
    return draw(models, ex, seeds, 4, False, None, text=feats)


ORACLE_ARMS = ("edit", "scene_tokens", "scene_tokens_keep_image", "scene_tokens_keep_all")


def oracle(models: NanoModels, targets: SceneTargets, seeds: int, report: dict[str, Any]) -> None:
    """Score the edit request's own features against the answer's scene-token features.

    Arms: ``edit`` (the request's own features), ``scene_tokens`` (the probe's target features),
    ``scene_tokens_keep_image`` (the target features with the request's own image tokens put back) and
    ``scene_tokens_keep_all`` (the request's own features with only the scene rows replaced).
    """
    fz = models.featurizer
    items = list(shapes_eval.edit_items("heldout"))
    jobs = [(it.edit, 1000 + s) for s in range(seeds) for it in items]
    for arm in ORACLE_ARMS:
        t0 = time.perf_counter()
        scores: list[dict[str, float]] = []
        for k in range(0, len(jobs), 48):
            edits = [e for e, _ in jobs[k : k + 48]]
            text = None
            if arm != "edit":
                n = edit_lengths(fz, edits)
                text = targets(models.text_encoder, [e.target for e in edits], n, max(n))  # (B, L, D)
            if arm in ("scene_tokens_keep_image", "scene_tokens_keep_all"):
                reqs = edit_requests(edits)
                with torch.no_grad():
                    own, _ = fz(models.text_encoder, reqs)
                for b, (req, m) in enumerate(zip(reqs, n, strict=True)):
                    ids = fz.kept_ids(req)
                    for r in range(m - SCENE_ROWS):
                        if arm == "scene_tokens_keep_all" or ids[r] == fz.image_pad_id():
                            text[b, r] = own[b, r]  # type: ignore[index]
            scores += score_edits(edits, sample(models, edits, text, [s for _, s in jobs[k : k + 48]]))
        record_arm(report, arm, [e.kind for e, _ in jobs], scores, time.perf_counter() - t0)


@torch.no_grad()
def diagnose(start: NanoModels, targets: SceneTargets, trained: Path) -> dict[str, Any]:
    """Held-out error of a trained folder's edit features against ``start``'s targets, by kind of row:
    rows of objects the edit leaves alone, of the changed object, of empty slots, of the background, and
    the neutral rows; and per edit kind, on the rows the edit changes (``changed_slots``), the error against
    the target, against the *source* scene's row, and the target's distance from the source's row."""
    fz = start.featurizer
    live = NanoModels.from_folder(trained).text_encoder
    proj = start.unet.encoder_hid_proj
    held = [it.edit for it in shapes_eval.edit_items("heldout")]
    per_kind: dict[str, list[tuple[float, float, float]]] = {}
    sums: dict[str, list[float]] = {
        "untouched": [],
        "changed": [],
        "empty": [],
        "background": [],
        "neutral": [],
    }
    for k in range(0, len(held), 48):
        edits = held[k : k + 48]
        n = edit_lengths(fz, edits)
        feats, _ = fz(live, edit_requests(edits))
        want = targets(start.text_encoder, [e.target for e in edits], n, feats.shape[1])  # (B, L, D)
        was = targets(start.text_encoder, [e.source for e in edits], n, feats.shape[1])  # (B, L, D)
        a, b, c = proj(feats), proj(want), proj(was)  # (B, L, D) each, as the UNet sees them
        power = (b**2).sum(-1)  # (B, L)
        err = ((a - b) ** 2).sum(-1) / power  # (B, L)
        to_source = ((a - c) ** 2).sum(-1) / power  # (B, L)
        apart = ((b - c) ** 2).sum(-1) / power  # (B, L)
        for i, (e, m) in enumerate(zip(edits, n, strict=True)):
            for j, changed in enumerate(changed_slots(e)):
                r = m - SCENE_ROWS + j
                if changed:
                    row = (float(err[i, r]), float(to_source[i, r]), float(apart[i, r]))
                    per_kind.setdefault(e.kind, []).append(row)
            sums["neutral"] += err[i, : m - SCENE_ROWS].tolist()
            sums["background"].append(float(err[i, m - 1]))
            by_slot = {o.position: o for o in e.target.objects}
            for j, pos in enumerate(world.POSITIONS):
                o = by_slot.get(pos)
                kind = "empty" if o is None else "untouched" if o in e.source.objects else "changed"
                sums[kind].append(float(err[i, m - SCENE_ROWS + j]))
    out: dict[str, Any] = {k: float(np.mean(v)) for k, v in sums.items()}
    out |= {f"{k}_rows": len(v) for k, v in sums.items()}
    out["changed_rows_by_kind"] = {
        kind: {
            "rows": len(rows),
            "error_to_target": float(np.mean([t for t, _, _ in rows])),
            "error_to_source_row": float(np.mean([s for _, s, _ in rows])),
            "target_from_source_row": float(np.mean([d for _, _, d in rows])),
            "closer_to_target": float(np.mean([t < s for t, s, _ in rows])),
        }
        for kind, rows in per_kind.items()
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--oracle", action="store_true", help="sample from the answer's target features")
    ap.add_argument("--diagnose", type=Path, default=None, help="a trained folder: its held-out row errors")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--bg-word", choices=("colour", "background"), default="colour")
    ap.add_argument(
        "--objects",
        choices=("caption", "one"),
        default="caption",
        help="an object's row: its position word in the target's caption, or in its own one-object caption",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--keep", type=float, default=1.0, help="weight of the caption features' anchor")
    ap.add_argument("--neutral", type=float, default=1.0, help="weight of the neutral rows' error")
    ap.add_argument(
        "--changed-scale",
        type=float,
        default=0.0,
        help="weight changed rows by scale / distance (SceneConfig)",
    )
    ap.add_argument("--seed", type=int, default=500, help="data seed (another one for a continued run)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or default_model_dir()
    models = NanoModels.from_folder(folder)
    fz = models.featurizer
    targets = SceneTargets(fz, args.bg_word, args.objects)
    report: dict[str, Any] = {"config": {**vars(args), "model": repo_path(folder)}, "arms": {}}
    if args.diagnose is not None:
        report["config"]["diagnose"] = repo_path(args.diagnose)
        report["config"]["out"] = None if args.out is None else repo_path(args.out)
        report["rows"] = diagnose(models, targets, args.diagnose)
        print(json.dumps(report["rows"]), flush=True)
        if args.out is not None:
            write_report(args.out, report)
        return
    if args.oracle:
        report["config"]["out"] = None if args.out is None else repo_path(args.out)
        oracle(models, targets, args.seeds, report)
        if args.out is not None:
            write_report(args.out, report)
        return
    if args.out is None:
        ap.error("--out is required unless --oracle")
    report["config"]["out"] = repo_path(args.out)
    # the recipe's ``scene`` stage with the probe's settings (8 caption rows a step, 10 warm-up steps)
    cfg = SceneConfig(
        args.batch, args.batch // 4, args.lr, 10, args.keep, args.neutral, changed_scale=args.changed_scale
    )
    stage = SceneStage(models.text_encoder, models.unet, fz, cfg, args.steps, args.seed, targets)
    held = [it.edit for it in shapes_eval.edit_items("heldout")]
    report["held_out_error_before"] = stage.heldout_error(held, [])
    print("held-out error before", report["held_out_error_before"], flush=True)
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        losses = stage.step(i)
        log_step(
            log,
            i,
            args.steps,
            t0,
            scene=losses["scene"],
            neutral=losses["neutral"],
            keep_caption=losses["caption_drift"],
        )
    report["log"] = log
    report["held_out_error_after"] = stage.heldout_error(held, [])
    print("held-out error after", report["held_out_error_after"], flush=True)
    live = models.text_encoder
    write_like(folder, args.out, live.eval(), models.unet, models.vae)
    (args.out / "scene_token_probe.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
