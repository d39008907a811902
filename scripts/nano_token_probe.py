"""Would edits work if the instruction's last token said the change in caption language? A probe.

In a caption, the UNet finds each object at the position word that closes its phrase ("… red circle on the
*left*"): that token's state carries the object, and the word says where. An edit request has no such token
for the object it changes: the image tokens (before the instruction, so blind to it) describe the source,
and the instruction's words describe the change in edit language. This probe trains only the shipped text
encoder so that the **last token of the instruction** (which sees the image and the whole instruction) takes
the state that the frozen encoder gives the position word of the changed object in the target's caption (the
changed object written first), while every other token of the edit features and every caption feature
stays where the frozen encoder puts it. The UNet is the shipped student's, untouched. Then the folder is
written and ``dreamlite eval shapes`` scores it; the held-out token error is printed before and after.

Kinds: colour, shape, move and add (the changed object exists in the target); remove and background have
no such object and keep their features.

With ``--image-cells`` the image tokens speak caption language too: every image token whose cell covers a
slot holding a source object (``text_pretrain.cell_slots``) is moved to the frozen encoder's state of the
position word of that object's own one-object caption (``[Generate]: a large red circle on the *left*``),
and edits of every kind are drawn; empty cells stay anchored.

    python scripts/nano_token_probe.py --out runs/token-probe [--steps 300]
    dreamlite eval shapes --model runs/token-probe --out F
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _nano_probe import log_step, optimizer_step, repo_path, write_like

from model_runtime.assets import default_model_dir
from model_runtime.train import shapes_eval, world
from model_runtime.train.diffusion import NanoModels
from model_runtime.train.distill import frozen_copy
from model_runtime.train.text_features import TextFeaturizer, TextRequest

KINDS = ("colour", "shape", "move", "add")
POSITION_TOKENS = tuple("Ġ" + p for p in world.POSITIONS)


def changed_caption(e: world.Edit) -> str:
    """The target's caption with the changed object first."""
    objs = list(e.target.objects)
    first = next(i for i, o in enumerate(objs) if o not in e.source.objects)
    return e.target.caption([first] + [i for i in range(len(objs)) if i != first])


def indices(fz: TextFeaturizer, tok: Any, edits: list[world.Edit]) -> tuple[list[int], list[int]]:
    """Per edit: the row of the instruction's last token in the edit features, and the row of the first
    position word in the changed caption's features."""
    im_end = tok.token_to_id("<|im_end|>")
    pos_ids = {tok.token_to_id(t) for t in POSITION_TOKENS}
    src, ref = [], []
    for e in edits:
        ids = fz.kept_ids(TextRequest("edit", e.instruction, np.zeros((8, 8, 3), np.uint8)))
        src.append(list(ids).index(im_end) - 1)
        cap = fz.kept_ids(TextRequest("generate", changed_caption(e)))
        ref.append(next(k for k, t in enumerate(cap) if t in pos_ids))
    return src, ref


def object_token(fz: TextFeaturizer, tok: Any, o: world.ShapeObject) -> tuple[str, int]:
    """A one-object caption of ``o`` and the row of its position word in the caption's features."""
    caption = f"{o.phrase()} on a white background"
    pos_ids = {tok.token_to_id(t) for t in POSITION_TOKENS}
    ids = fz.kept_ids(TextRequest("generate", caption))
    return caption, next(k for k, t in enumerate(ids) if t in pos_ids)


def cell_targets(
    fz: TextFeaturizer, tok: Any, ref: Any, edits: list[world.Edit]
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """(edit row, feature row) of every image token that covers a source object, and ``(N, D)`` the
    frozen caption states it is moved to."""
    from model_runtime.train.text_pretrain import cell_slots

    cells = cell_slots(fz.vlm_size[0], fz.merge)
    pad = fz.image_pad_id()
    where: list[tuple[int, int]] = []
    objects: list[world.ShapeObject] = []
    for b, e in enumerate(edits):
        ids = fz.kept_ids(TextRequest("edit", e.instruction, np.zeros((8, 8, 3), np.uint8)))
        pads = [k for k, t in enumerate(ids) if t == pad]
        by_slot = {o.position: o for o in e.source.objects}
        for k, slot in enumerate(cells):
            if slot is not None and slot in by_slot:
                where.append((b, pads[k]))
                objects.append(by_slot[slot])
    if not objects:
        return where, torch.zeros((0, 1))
    capt = [object_token(fz, tok, o) for o in objects]
    with torch.no_grad():
        feats, _ = fz(ref, [TextRequest("generate", c) for c, _ in capt])  # (N, L, D)
    return where, feats[torch.arange(len(capt)), torch.tensor([r for _, r in capt])]


def features(fz: TextFeaturizer, enc: Any, edits: list[world.Edit], scenes: list[world.Scene]) -> Any:
    """Edit features, changed-caption features (edits of ``KINDS``, in order) and plain caption features."""
    ereq = [TextRequest("edit", e.instruction, world.render(e.source)) for e in edits]
    creq = [TextRequest("generate", changed_caption(e)) for e in edits if e.kind in KINDS]
    greq = [TextRequest("generate", s.caption()) for s in scenes]
    return fz(enc, ereq), fz(enc, creq) if creq else None, fz(enc, greq) if greq else None


def token_error(live: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relative squared error per row: ‖a − b‖² / ‖b‖²."""
    return ((live - target) ** 2).sum(-1) / (target**2).sum(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--keep", type=float, default=1.0, help="weight of the other tokens' anchor")
    ap.add_argument("--image-cells", action="store_true", help="image tokens to caption states too")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    kinds = world.EDIT_KINDS if args.image_cells else KINDS
    torch.set_num_threads(args.threads)
    folder = args.model or default_model_dir()
    models = NanoModels.from_folder(folder)
    fz = models.featurizer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    live = models.text_encoder.train().requires_grad_(True)
    ref = frozen_copy(live)
    opt = torch.optim.AdamW(live.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    held = [it.edit for it in shapes_eval.edit_items("heldout") if it.edit.kind in KINDS]

    @torch.no_grad()
    def held_error() -> float:
        live.eval()
        s, r = indices(fz, tok, held)
        (ef, _), _, _ = features(fz, live, held, [])
        (cref, _) = fz(ref, [TextRequest("generate", changed_caption(e)) for e in held])
        b = torch.arange(len(held))
        err = token_error(ef[b, torch.tensor(s)], cref[b, torch.tensor(r)])
        live.train()
        return float(err.mean())

    report: dict[str, Any] = {
        "config": {**vars(args), "model": repo_path(folder), "out": repo_path(args.out)}
    }
    report["held_out_token_error_before"] = held_error()
    print("held-out token error before", report["held_out_token_error_before"], flush=True)
    log = []
    t0 = time.perf_counter()
    for i in range(args.steps):
        rng = np.random.default_rng([400, i])
        edits = []
        while len(edits) < args.batch:
            e = world.train_edit(rng)
            if e.kind in kinds:
                edits.append(e)
        scenes = [world.train_scene(rng) for _ in range(args.batch // 4)]
        changing = [k for k, e in enumerate(edits) if e.kind in KINDS]
        s, r = indices(fz, tok, [edits[k] for k in changing])
        with torch.no_grad():
            (ef0, em), changed, (gf0, gm) = features(fz, ref, edits, scenes)
        (ef, _), _, (gf, _) = features(fz, live, edits, scenes)
        b = torch.tensor(changing, dtype=torch.int64)
        si, ri = torch.tensor(s, dtype=torch.int64), torch.tensor(r, dtype=torch.int64)
        move = ef.sum() * 0.0
        if changed is not None:
            move = move + token_error(ef[b, si], changed[0][torch.arange(len(changing)), ri]).mean()
        other = em.clone().float()
        other[b, si] = 0.0
        if args.image_cells:
            where, targets = cell_targets(fz, tok, ref, edits)
            if where:
                wb, wr = torch.tensor([w[0] for w in where]), torch.tensor([w[1] for w in where])
                move = move + token_error(ef[wb, wr], targets).mean()
                other[wb, wr] = 0.0
        scale = (ef0**2).sum(-1).mean()
        keep = (((ef - ef0) ** 2).sum(-1) * other).sum() / other.sum() / scale
        gkeep = (((gf - gf0) ** 2).sum(-1) * gm).sum() / gm.sum() / scale
        loss = move + args.keep * (keep + gkeep)
        optimizer_step(opt, live.parameters(), loss, i, args.steps, args.lr)
        log_step(log, i, args.steps, t0, token=float(move), keep_edit=float(keep), keep_caption=float(gkeep))
    report["log"] = log
    report["held_out_token_error_after"] = held_error()
    print("held-out token error after", report["held_out_token_error_after"], flush=True)
    write_like(folder, args.out, live.eval(), models.unet, models.vae)
    (args.out / "token_probe.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
