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
from _nano_probe import log_step, optimizer_step, record_arm, repo_path, score_edits, write_like, write_report
from nano_edit_mode_probe import draw, load

from model_runtime.assets import default_model_dir
from model_runtime.train import shapes_eval, world
from model_runtime.train.diffusion import (
    Example,
    NanoModels,
)
from model_runtime.train.distill import frozen_copy
from model_runtime.train.text_features import TextFeaturizer, TextRequest

SCENE_ROWS = len(world.POSITIONS) + 1  # one row per slot, one for the background


class SceneTargets:
    """Caption-language target states of an edit request's features, from a frozen encoder."""

    def __init__(
        self, fz: TextFeaturizer, tokenizer_file: Path, bg_word: str = "colour", objects: str = "caption"
    ) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file))
        self.fz = fz
        self.pos_ids = {tok.token_to_id("Ġ" + p): p for p in world.POSITIONS}
        self.bg_ids = {tok.token_to_id("Ġ" + b) for b in world.BACKGROUND_NAMES}
        self.background_id = tok.token_to_id("Ġbackground")
        self.bg_word = bg_word
        self.objects = objects
        self._one: dict[world.ShapeObject, torch.Tensor] = {}

    def caption_rows(self, scene: world.Scene) -> tuple[str, list[int | None], int]:
        """The scene's caption (slot order), the row of each slot's position word (None: empty slot) and
        the row of the background word."""
        caption = scene.caption()
        ids = self.fz.kept_ids(TextRequest("generate", caption))
        rows: list[int | None] = [None] * len(world.POSITIONS)
        for k, t in enumerate(ids):
            if t in self.pos_ids:
                rows[world.POSITIONS.index(self.pos_ids[t])] = k  # type: ignore[arg-type]
        if self.bg_word == "colour":
            bg = max(k for k, t in enumerate(ids) if t in self.bg_ids)
        else:
            bg = max(k for k, t in enumerate(ids) if t == self.background_id)
        return caption, rows, bg

    @torch.no_grad()
    def __call__(self, ref: Any, edits: list[world.Edit], lengths: list[int], width: int) -> torch.Tensor:
        """``(B, width, D)`` target features of edit requests whose kept rows number ``lengths``."""
        capts = [self.caption_rows(e.target) for e in edits]
        feats, _ = self.fz(ref, [TextRequest("generate", c) for c, _, _ in capts])  # (B, Lc, D)
        neutral = feats[0, 0]  # (D,) the constant first kept token of every caption
        out = neutral.expand(len(edits), width, feats.shape[-1]).clone()  # (B, W, D)
        for b, ((_, rows, bg), n) in enumerate(zip(capts, lengths, strict=True)):
            for j, r in enumerate(rows):
                if r is not None:
                    out[b, n - SCENE_ROWS + j] = feats[b, r]
            out[b, n - 1] = feats[b, bg]
        if self.objects == "one":
            for b, (e, n) in enumerate(zip(edits, lengths, strict=True)):
                for o in e.target.objects:
                    out[b, n - SCENE_ROWS + world.POSITIONS.index(o.position)] = self.one_object(ref, o)
        return out

    @torch.no_grad()
    def one_object(self, ref: Any, o: world.ShapeObject) -> torch.Tensor:
        """``(D,)`` the position word's state in the object's own caption (it sees only the object's
        phrase, so it is the same in every scene); cached per object (the encoder is frozen)."""
        if o not in self._one:
            caption = f"{o.phrase()} on a white background"
            ids = self.fz.kept_ids(TextRequest("generate", caption))
            row = next(k for k, t in enumerate(ids) if t in self.pos_ids)
            feats, _ = self.fz(ref, [TextRequest("generate", caption)])  # (1, L, D)
            self._one[o] = feats[0, row]
        return self._one[o]


def edit_lengths(fz: TextFeaturizer, edits: list[world.Edit]) -> list[int]:
    """Kept rows of each edit request."""
    blank = np.zeros((8, 8, 3), np.uint8)
    return [len(fz.kept_ids(TextRequest("edit", e.instruction, blank))) for e in edits]


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
                text = targets(models.text_encoder, edits, n, max(n))  # (B, L, D)
            if arm in ("scene_tokens_keep_image", "scene_tokens_keep_all"):
                with torch.no_grad():
                    own, _ = fz(
                        models.text_encoder,
                        [TextRequest("edit", e.instruction, world.render(e.source)) for e in edits],
                    )
                for b, (e, m) in enumerate(zip(edits, n, strict=True)):
                    ids = fz.kept_ids(TextRequest("edit", e.instruction, world.render(e.source)))
                    for r in range(m - SCENE_ROWS):
                        if arm == "scene_tokens_keep_all" or ids[r] == fz.image_pad_id():
                            text[b, r] = own[b, r]  # type: ignore[index]
            scores += score_edits(edits, sample(models, edits, text, [s for _, s in jobs[k : k + 48]]))
        record_arm(report, arm, [e.kind for e, _ in jobs], scores, time.perf_counter() - t0)


@torch.no_grad()
def diagnose(start: NanoModels, targets: SceneTargets, trained: Path) -> dict[str, float]:
    """Held-out error of a trained folder's edit features against ``start``'s targets, by kind of row:
    rows of objects the edit leaves alone, of the changed object, of empty slots, of the background, and
    the neutral rows."""
    fz = start.featurizer
    live = load(trained).text_encoder
    proj = start.unet.encoder_hid_proj
    held = [it.edit for it in shapes_eval.edit_items("heldout")]
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
        feats, _ = fz(live, [TextRequest("edit", e.instruction, world.render(e.source)) for e in edits])
        want = targets(start.text_encoder, edits, n, feats.shape[1])  # (B, L, D)
        a, b = proj(feats), proj(want)  # (B, L, D) each, as the UNet sees them
        err = ((a - b) ** 2).sum(-1) / (b**2).sum(-1)  # (B, L)
        for i, (e, m) in enumerate(zip(edits, n, strict=True)):
            sums["neutral"] += err[i, : m - SCENE_ROWS].tolist()
            sums["background"].append(float(err[i, m - 1]))
            by_slot = {o.position: o for o in e.target.objects}
            for j, pos in enumerate(world.POSITIONS):
                o = by_slot.get(pos)
                kind = "empty" if o is None else "untouched" if o in e.source.objects else "changed"
                sums[kind].append(float(err[i, m - SCENE_ROWS + j]))
    return {k: float(np.mean(v)) for k, v in sums.items()} | {f"{k}_rows": len(v) for k, v in sums.items()}


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
    ap.add_argument("--seed", type=int, default=500, help="data seed (another one for a continued run)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or default_model_dir()
    models = load(folder)
    fz = models.featurizer
    targets = SceneTargets(fz, fz.tokenizer_file, args.bg_word, args.objects)
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
    live = models.text_encoder.train().requires_grad_(True)
    ref = frozen_copy(live)
    opt = torch.optim.AdamW(live.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    held = [it.edit for it in shapes_eval.edit_items("heldout")]

    proj = models.unet.encoder_hid_proj.requires_grad_(False)  # the UNet's view: Linear, then RMSNorm

    def row_error(live_feats: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` squared error of rows as the UNet sees them, relative to the target's."""
        a, b = proj(live_feats), proj(want)  # (B, L, D) each
        return ((a - b) ** 2).sum(-1) / (b**2).sum(-1)

    def edit_error(enc: Any, edits: list[world.Edit]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean error of the scene rows and of the neutral rows."""
        n = edit_lengths(fz, edits)
        feats, mask = fz(enc, [TextRequest("edit", e.instruction, world.render(e.source)) for e in edits])
        want = targets(ref, edits, n, feats.shape[1])  # (B, L, D)
        m = mask.float()
        per_row = row_error(feats, want)  # (B, L)
        scene = torch.zeros_like(m)
        for b, k in enumerate(n):
            scene[b, k - SCENE_ROWS : k] = 1.0
        neutral = m * (1 - scene)
        return (per_row * scene).sum() / scene.sum(), (per_row * neutral).sum() / neutral.sum()

    @torch.no_grad()
    def held_error() -> dict[str, float]:
        live.eval()
        parts = [edit_error(live, held[k : k + 48]) for k in range(0, len(held), 48)]
        live.train()
        return {
            "scene": float(np.mean([float(s) for s, _ in parts])),
            "neutral": float(np.mean([float(u) for _, u in parts])),
        }

    report["held_out_error_before"] = held_error()
    print("held-out error before", report["held_out_error_before"], flush=True)
    log = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        rng = np.random.default_rng([args.seed, i])
        edits = [world.train_edit(rng) for _ in range(args.batch)]
        scenes = [world.train_scene(rng) for _ in range(args.batch // 4)]
        err_scene, err_neutral = edit_error(live, edits)
        loss_edit = err_scene + args.neutral * err_neutral
        greq = [TextRequest("generate", s.caption()) for s in scenes]
        with torch.no_grad():
            gf0, gm = fz(ref, greq)
        gf, _ = fz(live, greq)
        gkeep = (row_error(gf, gf0) * gm).sum() / gm.sum()
        loss = loss_edit + args.keep * gkeep
        optimizer_step(opt, live.parameters(), loss, i, args.steps, args.lr)
        log_step(
            log,
            i,
            args.steps,
            t0,
            scene=float(err_scene),
            neutral=float(err_neutral),
            keep_caption=float(gkeep),
        )
    report["log"] = log
    report["held_out_error_after"] = held_error()
    print("held-out error after", report["held_out_error_after"], flush=True)
    write_like(folder, args.out, live.eval(), models.unet, models.vae)
    (args.out / "scene_token_probe.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
