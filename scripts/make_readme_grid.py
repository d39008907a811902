"""Make the README picture grid of the embedded dreamlite-nano model: prompts → images, sources → edits.

    python scripts/make_readme_grid.py [--model DIR] [--out docs/img/nano-grid.png]

Row 1–2: held-out ShapesEval prompts and the 4-step images. Row 3–4: one held-out edit of each kind: the
source, then the edited image. Everything goes through the public pipeline (torch, float32, seed 0).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 128
SCALE = 2
CAPTION_H = 64


def caption_tile(image: np.ndarray, text: str) -> Image.Image:
    tile = Image.new("RGB", (TILE * SCALE, TILE * SCALE + CAPTION_H), "white")
    tile.paste(Image.fromarray(image).resize((TILE * SCALE, TILE * SCALE), Image.Resampling.NEAREST), (0, 0))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    lines = textwrap.wrap(text, width=40)[:5]
    for i, line in enumerate(lines):
        draw.text((4, TILE * SCALE + 2 + 12 * i), line, fill="black", font=font)
    return tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default="docs/img/nano-grid.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from model_runtime import SampleSpec, load_pipeline
    from model_runtime.assets import default_model_dir
    from model_runtime.train import shapes_eval, world

    torch.set_num_threads(2)
    pipe = load_pipeline(Path(args.model) if args.model else default_model_dir())
    gen = shapes_eval.generate_items("heldout")
    picks = [gen[i] for i in (0, 5, 50, 60, 100, 110)]
    results = pipe.run([SampleSpec(task="generate", prompt=it.prompt, seed=args.seed) for it in picks])
    tiles = [caption_tile(r.image, it.prompt) for it, r in zip(picks, results, strict=True)]  # type: ignore[arg-type]
    edits = shapes_eval.edit_items("heldout")
    chosen = [next(e for e in edits if e.edit.kind == kind) for kind in world.EDIT_KINDS]
    sources = [world.render(e.edit.source) for e in chosen]
    outs = pipe.run(
        [
            SampleSpec(task="edit", prompt=e.edit.instruction, seed=args.seed, image=s)
            for e, s in zip(chosen, sources, strict=True)
        ]
    )
    edit_tiles = []
    for e, s, r in zip(chosen, sources, outs, strict=True):
        edit_tiles.append(caption_tile(s, f"source ({e.edit.kind})"))
        edit_tiles.append(caption_tile(r.image, f"edit: {e.edit.instruction}"))  # type: ignore[arg-type]
    cols = 6
    w, h = tiles[0].size
    rows = [tiles, edit_tiles[:6], edit_tiles[6:]]
    grid = Image.new("RGB", (cols * w, len(rows) * h), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid.paste(tile, (c * w, r * h))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
