"""Why a trapped VAE fit cannot recover a colour pair: the decoder's ReLU dead zone, measured.

For a VAE checkpoint of the recipe's ``vae`` stage and each of the given colours on a background (a large
centred square), reports:

* the centre pixel after encode → decode, against the rendered one;
* the same after the *latent* is optimised directly for the render (200 Adam steps on the decoder's input;
  when even the best latent cannot bring the colour back, the decoder is the trap, not the encoder);
* the gradient norm of the reconstruction loss on every encoder weight (exactly 0 when every path back
  from those pixels goes through a ReLU that is off);
* the fraction of the last decoder block's fuse units that are off (≤ 0 before the ReLU) at the centre pixel.

    python scripts/nano_vae_dead_zone_probe.py runs/nano5/vae/ckpt.pt [--background black] \\
        [--colours green red blue] [--out docs/results/nano/vae-dead-zone.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from model_runtime.train import vae_fit, world
from model_runtime.train.recipe import RecipeConfig


def probe(vae: Any, colour: str, background: str) -> dict[str, Any]:
    """The four measurements of one pair (module docstring)."""
    img = world.render(world.Scene((world.ShapeObject("square", colour, "large", "centre"),), background))
    x = torch.from_numpy(img[None]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (1, 3, H, W)
    c = world.IMAGE_SIZE // 2

    def pixel(y: torch.Tensor) -> list[int]:
        return [int(v) for v in ((y[0, :, c, c].clamp(-1, 1) + 1.0) * 127.5).round().tolist()]

    vae.requires_grad_(False)
    with torch.no_grad():
        z0 = vae.encode(x).latents  # (1, 4, h, w)
        decoded = pixel(vae.decode(z0).sample)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(200):
        loss = ((vae.decode(z).sample - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    with torch.no_grad():
        best = pixel(vae.decode(z).sample)
    vae.requires_grad_(True)
    vae.zero_grad()
    ((vae.decode(vae.encode(x).latents).sample - x) ** 2).mean().backward()  # type: ignore[no-untyped-call]
    grad = float(
        sum(float(p.grad.norm()) ** 2 for p in vae.encoder.parameters() if p.grad is not None) ** 0.5
    )
    vae.requires_grad_(False)
    blocks = [m for m in vae.decoder.modules() if type(m).__name__ == "AutoencoderTinyBlock"]
    seen: dict[str, torch.Tensor] = {}
    hook = blocks[-1].fuse.register_forward_hook(lambda _m, inp, _out: seen.update(pre=inp[0].detach()))
    with torch.no_grad():
        vae.decode(z0)
    hook.remove()
    pre = seen["pre"]  # (1, C, H', W') before the last block's ReLU
    scale = pre.shape[-1] / world.IMAGE_SIZE
    centre = pre[0, :, int(c * scale), int(c * scale)]  # (C,)
    return {
        "pair": f"{colour}/{background}",
        "rendered": [int(v) for v in img[c, c]],
        "decoded": decoded,
        "decoded_from_best_latent": best,
        "encoder_grad_norm": grad,
        "last_block_units_off": float((centre <= 0).float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", type=Path, help="<run>/vae/ckpt.pt")
    ap.add_argument("--run-recipe", type=Path, default=None, help="recipe.json of the run (default: beside)")
    ap.add_argument("--background", default="black", choices=list(world.BACKGROUNDS))
    ap.add_argument("--colours", nargs="+", default=list(world.COLOURS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe_file = args.run_recipe or args.ckpt.parent.parent / "recipe.json"
    cfg = RecipeConfig.from_json(json.loads(recipe_file.read_text()))
    vae = vae_fit.build_vae(cfg.sizes, seed=cfg.seed)
    vae.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=False)["stage"]["vae"])
    vae.eval()
    rows = [probe(vae, colour, args.background) for colour in args.colours]
    for row in rows:
        print(json.dumps(row))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"ckpt": str(args.ckpt), "errors": vae_fit.pair_errors(vae), "pairs": rows}
        report["errors"] = {f"{c}/{b}": e for (c, b), e in report["errors"].items()}
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
