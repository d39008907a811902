"""Probe: does dreamlite-nano read an edit's in-context condition latent, and what makes it read it?

An edit runs the UNet on [noisy target | source latent]. For the ~85 % of latent cells an edit leaves
untouched, the answer is in the source latent (measured: source and target latents of those cells differ by
an MSE of 0.0004–0.02 against a latent power of ~1). This script measures how much the model uses that:
on a fixed held-out batch of edits at noise levels 0.6 and 0.9, the x0 error of the model's prediction on
untouched-object cells, once with the source latent and once with a zero condition (the same text features,
which include the VLM's view of the source). ``usage`` = error without / error with the condition; 1 means
the condition half is ignored.

Then it fine-tunes copies of the shipped model for ``--steps`` steps (the recipe's data and hyper-parameters,
``--edit-share`` edit rows: 0.5 as the joint stage, 1 as the edit stage; the text encoder trained at its low
rate) in several arms, measuring usage every ``--every`` steps, and finally scores Euler samples (no
guidance) of held-out edits and prompts with ShapesEval. Arms are
``name:layout:vlm_image_drop[:copy_share[:keep_weight[:freeze[:change_weight]]]]`` (``--task copy``
trains and measures identity edits only: the copy path alone; ``--pre-copy N`` first trains each layout on
N steps of identity edits, once, and every arm of that layout starts from the result, a copy curriculum):

* ``layout``: a key of ``configs.UNET_LAYOUTS``. New transformer modules start with a zero ``proj_out``
  (an identity, so ``topup`` starts from exactly the shipped function); self-attention added to a block that
  had none starts with a zero output projection, which is not an identity there (DreamLite's
  remove-self-attention path replaces the residual by ``norm1``'s output), so ``attn2`` starts nearby;
* ``vlm_image_drop``: share of edit rows whose VLM sees a blank image instead of the source (so only the
  condition latent tells what to keep);
* ``copy_share``: share of edit rows turned into identity edits (empty instruction, target = source);
* ``keep_weight``: loss weight of the cells of objects the edit leaves as they are (``object_weight`` 4 when
  not given, or ``-``): a loss that rewards copying them from the condition latent;
* ``freeze``: ``+``-separated parts of UNet parameter names (``attn1``: every self-attention) that the arm's
  training leaves as they are, e.g. as the copy curriculum left them (``-``: none);
* ``change_weight``: loss weight of the cells the edit changes (0: edit rows teach only what to keep); with
  ``--change-ramp N`` it rises linearly to ``object_weight`` over the first N steps.

Warm starts from the shipped 4-step student: the arms rank interventions against each other; they do not
predict a full recipe run.

    python scripts/nano_cond_usage_probe.py [--steps 240] [--out docs/results/nano/cond-usage-probe.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--every", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-kind", type=int, default=8, help="held-out edits per kind (and 3x prompts)")
    parser.add_argument("--sample-steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak UNet learning rate of the fine-tune")
    parser.add_argument(
        "--text-lr", type=float, default=3e-4, help="peak text-encoder learning rate of the arms (0: frozen)"
    )
    parser.add_argument(
        "--task",
        choices=("edit", "copy"),
        default="edit",
        help="copy: every edit row asks for its own source (unconditional text): the copy path alone",
    )
    parser.add_argument(
        "--pre-copy", type=int, default=0, help="identity-edit steps before each arm's training"
    )
    parser.add_argument("--pre-copy-lr", type=float, default=1e-3)
    parser.add_argument(
        "--carry-optimizer",
        action="store_true",
        help="arms start with the copy curriculum's AdamW state instead of a fresh one",
    )
    parser.add_argument(
        "--edit-kinds",
        default=None,
        help="comma-separated edit kinds the arms train on (default: all six; the copy curriculum and the "
        "held-out measurements are unchanged)",
    )
    parser.add_argument(
        "--pre-copy-ckpt",
        default=None,
        help="path prefix of the copy curriculum's weights (+ .LAYOUT.pt): loaded if present, else written",
    )
    parser.add_argument("--edit-share", type=float, default=0.5, help="share of edit rows per batch")
    parser.add_argument(
        "--image-drop",
        type=float,
        default=0.1,
        help="share of the arms' edit rows trained with a zero condition latent (the recipe's 0.1)",
    )
    parser.add_argument(
        "--change-ramp", type=int, default=0, help="steps over which change_weight rises to object_weight"
    )
    parser.add_argument("--arms", default="base:mobile:0,topup:topup:0,blind:mobile:0.5")
    parser.add_argument("--out", default="docs/results/nano/cond-usage-probe.json")
    parser.add_argument("--model", type=Path, default=None, help="start folder (default: the embedded model)")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from _nano_probe import held_out_edits, load_shipped, repo_path, write_report

    from model_runtime.train import configs, diffusion, shapes_eval, world
    from model_runtime.train.configs import NanoSizes
    from model_runtime.train.diffusion import DiffusionConfig, DiffusionStage, Example, NanoModels
    from model_runtime.train.models import build_unet

    torch.set_num_threads(args.threads)
    shipped_parts = load_shipped(args.model)
    vae, featurizer = shipped_parts.vae, shipped_parts.featurizer
    shipped_text, shipped_unet = shipped_parts.text_encoder, shipped_parts.unet

    edits = held_out_edits(args.per_kind)
    prompts = list(shapes_eval.generate_items("heldout"))[: 3 * args.per_kind]
    if args.task == "copy":  # held-out scenes, each to be reproduced from itself
        renders = [world.render(g.scene) for g in shapes_eval.generate_items("heldout")][-6 * args.per_kind :]
        pairs = [Example("edit", None, img, img) for img in renders]
    else:
        pairs = [
            Example("edit", e.instruction, world.render(e.target), world.render(e.source)) for e in edits
        ]
    held: list[Example] = pairs + [Example("generate", g.prompt, world.render(g.scene)) for g in prompts]
    n_edit = len(pairs)

    def untouched_cells() -> Any:
        """(E, 1, 16, 16): latent cells of objects the edit leaves as they are (background edits excluded)."""
        masks = []
        for i, ex in enumerate(held[:n_edit]):
            tgt, src = ex.target, ex.source
            assert tgt is not None
            assert src is not None
            obj, same = diffusion.object_pixels(tgt), ~diffusion.changed_pixels(tgt, src)
            background = args.task == "edit" and edits[i].kind == "background"
            masks.append(np.zeros_like(obj) if background else obj & same)
        return F.max_pool2d(torch.from_numpy(np.stack(masks)).float()[:, None], 8)

    keep = untouched_cells()  # (E, 1, 16, 16)
    x0 = diffusion.encode_images(vae, [ex.target for ex in held])  # type: ignore[misc]  # (B, 4, 16, 16)
    src = diffusion.encode_images(vae, [ex.source for ex in held[:n_edit]])  # type: ignore[misc]  # (E, 4, 16, 16)
    cond = torch.cat([src, torch.zeros_like(x0[n_edit:])])  # (B, 4, 16, 16): the frozen VAE's, computed once
    levels = (0.6, 0.9)
    noises = [
        torch.randn(x0.shape, generator=torch.Generator().manual_seed(5 + i)) for i in range(len(levels))
    ]

    @torch.no_grad()
    def measure(models: NanoModels) -> dict[str, float]:
        models.unet.eval()
        models.text_encoder.eval()
        text, mask = diffusion.encode_texts(models, held, [False] * len(held))  # (B, L, D), (B, L)
        out: dict[str, list[float]] = {"untouched_with": [], "untouched_without": [], "generate": []}
        for level, noise in zip(levels, noises, strict=True):
            t = torch.full((len(held),), level)
            x_t = (1 - level) * x0 + level * noise  # (B, 4, 16, 16)
            for key, c in (("untouched_with", cond), ("untouched_without", torch.zeros_like(cond))):
                v = diffusion.unet_velocity(models.unet, x_t, c, t, text, mask)
                err = ((x_t - level * v - x0) ** 2).mean(dim=1, keepdim=True)  # (B, 1, 16, 16) x0 error
                out[key].append(float((err[:n_edit] * keep).sum() / keep.sum()))
                if key == "untouched_with":
                    out["generate"].append(float(err[n_edit:].mean()))
        row = {k: round(float(np.mean(v)), 4) for k, v in out.items()}
        row["usage"] = round(row["untouched_without"] / row["untouched_with"], 3)
        return row

    def shapes_scores(models: NanoModels) -> dict[str, Any]:
        images = np.concatenate(
            [
                diffusion.sample(
                    models, held[i : i + 16], [1000] * len(held[i : i + 16]), args.sample_steps, None
                )
                for i in range(0, len(held), 16)
            ]
        )
        per_kind: dict[str, list[dict[str, float]]] = {}
        for e, img in zip(edits, images[:n_edit], strict=True):
            per_kind.setdefault(e.kind, []).append(shapes_eval.score_edit(e, shapes_eval.analyse(img)))
        kinds = {
            k: {p: round(float(np.mean([s[p] for s in v])), 3) for p in ("score", "instruction", "preserve")}
            for k, v in per_kind.items()
        }
        gen = [
            shapes_eval.score_generate(g.scene, shapes_eval.analyse(img))["overall"]
            for g, img in zip(prompts, images[n_edit:], strict=True)
        ]
        return {
            "edit": round(float(np.mean([d["score"] for d in kinds.values()])), 3),
            "edit_preserve": round(float(np.mean([d["preserve"] for d in kinds.values()])), 3),
            "edit_instruction": round(float(np.mean([d["instruction"] for d in kinds.values()])), 3),
            "edit_kinds": kinds,
            "generate": round(float(np.mean(gen)), 3),
        }

    def warm_unet(layout: str) -> Any:
        unet = build_unet(NanoSizes(), seed=3, layout=layout)
        missing = set(unet.load_state_dict(shipped_unet.state_dict(), strict=False).missing_keys)
        with torch.no_grad():
            for name, module in unet.named_modules():
                new_attn = name.endswith("attn1") and f"{name}.to_q.weight" in missing
                new_block = name.endswith("proj_out") and f"{name}.weight" in missing
                if new_attn:
                    module.to_out[0].weight.zero_()
                    module.to_out[0].bias.zero_()
                elif new_block:
                    module.weight.zero_()
                    module.bias.zero_()
        return unet

    results: dict[str, Any] = {
        "model": "embedded" if args.model is None else repo_path(args.model),
        "task": args.task,
        "steps": args.steps,
        "lr": args.lr,
        "text_lr": args.text_lr,
        "edit_share": args.edit_share,
        "pre_copy": args.pre_copy,
        "carry_optimizer": args.carry_optimizer,
        "change_ramp": args.change_ramp,
        "image_drop": args.image_drop,
        "edit_kinds": args.edit_kinds,
        "levels": list(levels),
        "held_out": {"edits": n_edit, "prompts": len(prompts)},
        "sample_steps": args.sample_steps,
        "arms": {},
    }
    gap = ((src - x0[:n_edit]) ** 2).mean(dim=1, keepdim=True)  # (E, 1, 16, 16)
    results["untouched_cells"] = {  # how much of the answer the condition latent holds
        "count": int(keep.sum()),
        "source_vs_target_latent_mse": round(float((gap * keep).sum() / keep.sum()), 4),
        "target_latent_power": round(float((x0[:n_edit] ** 2).mean()), 3),
    }
    shipped = NanoModels(shipped_text, shipped_unet, vae, featurizer, configs.scheduler_config())
    results["shipped"] = {"measure": measure(shipped)}
    if args.task == "edit":
        results["shipped"]["shapes"] = shapes_scores(shipped)
    print("shipped", json.dumps(results["shipped"]), flush=True)
    pre_copied: dict[str, tuple[Any, Any, list[dict[str, Any]]]] = {}  # layout -> (text, unet, curve)
    pre_optimizer: dict[str, Any] = {}  # layout -> the copy curriculum's AdamW state

    def start(layout: str) -> tuple[NanoModels, list[dict[str, Any]]]:
        """The arm's starting models: the shipped ones, after the (shared) copy curriculum if asked."""
        if layout not in pre_copied:
            models = NanoModels(
                copy.deepcopy(shipped_text), warm_unet(layout), vae, featurizer, configs.scheduler_config()
            )
            curve = [{"step": 0, **measure(models)}]
            print(layout, json.dumps(curve[-1]), flush=True)
            ckpt = Path(f"{args.pre_copy_ckpt}.{layout}.pt") if args.pre_copy_ckpt else None
            if args.pre_copy and ckpt is not None and ckpt.is_file():
                saved = torch.load(ckpt, map_location="cpu", weights_only=False)
                if saved["pre_copy"] != args.pre_copy:
                    raise SystemExit(f"{ckpt} holds {saved['pre_copy']} copy steps, not {args.pre_copy}")
                models.unet.load_state_dict(saved["unet"])
                models.text_encoder.load_state_dict(saved["text_encoder"])
                pre_optimizer[layout] = saved["optimizer"]
                curve.append(saved["curve_entry"])
                print(layout, "loaded", ckpt, json.dumps(curve[-1]), flush=True)
            elif args.pre_copy:  # a copy curriculum: identity edits only, then the arm's data
                pre_cfg = diffusion.copy_only(DiffusionConfig(edit_share=1.0, lr=args.pre_copy_lr, warmup=20))
                pre = DiffusionStage(models, pre_cfg, args.pre_copy, seed=4343)
                t_pre = time.perf_counter()
                for i in range(args.pre_copy):
                    pre.step(i)
                pre_optimizer[layout] = copy.deepcopy(pre.opt.state_dict())
                pre.apply_ema()
                pre_s = round(time.perf_counter() - t_pre, 1)
                curve.append(
                    {"step": 0, "after_copy_steps": args.pre_copy, "copy_seconds": pre_s, **measure(models)}
                )
                print(layout, json.dumps(curve[-1]), flush=True)
                if ckpt is not None:
                    state = {
                        "pre_copy": args.pre_copy,
                        "unet": models.unet.state_dict(),
                        "text_encoder": models.text_encoder.state_dict(),
                        "optimizer": pre_optimizer[layout],
                        "curve_entry": curve[-1],
                    }
                    torch.save(state, ckpt)
            pre_copied[layout] = (models.text_encoder, models.unet, curve)
        text_encoder, unet, curve = pre_copied[layout]
        models = NanoModels(
            copy.deepcopy(text_encoder), copy.deepcopy(unet), vae, featurizer, configs.scheduler_config()
        )
        return models, copy.deepcopy(curve)

    for spec in [s.strip() for s in args.arms.split(",") if s.strip()]:
        name, layout, drop, *rest = spec.split(":")
        copy_share = float(rest[0]) if rest else 0.0
        keep_weight = float(rest[1]) if len(rest) > 1 and rest[1] != "-" else None
        freeze = rest[2].split("+") if len(rest) > 2 and rest[2] != "-" else []
        change_weight = float(rest[3]) if len(rest) > 3 else None
        models, curve = start(layout)
        frozen = [p for n, p in models.unet.named_parameters() if any(k and k in n for k in freeze)]
        for p in frozen:  # e.g. the copy curriculum's self-attention, kept through the edit steps
            p.requires_grad_(False)
        cfg = DiffusionConfig(
            edit_share=args.edit_share,
            lr=args.lr,
            text_lr=args.text_lr,
            warmup=20,
            vlm_image_drop=float(drop),
            copy_share=copy_share,
            keep_weight=keep_weight,
            change_weight=change_weight,
            image_drop=args.image_drop,
            edit_kinds=tuple(args.edit_kinds.split(",")) if args.edit_kinds else None,
        )
        if args.task == "copy":
            cfg = diffusion.copy_only(cfg)
        stage = DiffusionStage(models, cfg, args.steps, seed=4242)
        if args.carry_optimizer:
            if layout not in pre_optimizer:
                raise SystemExit("--carry-optimizer needs --pre-copy")
            stage.opt.load_state_dict(pre_optimizer[layout])
        t0 = time.perf_counter()
        train_s = 0.0
        for i in range(args.steps):
            if change_weight is not None and args.change_ramp:
                ramp = min(1.0, i / args.change_ramp)
                w = change_weight + ramp * (cfg.object_weight - change_weight)
                stage.cfg = dataclasses.replace(cfg, change_weight=w)
            parts = stage.step(i)
            if (i + 1) % args.every == 0 or i + 1 == args.steps:
                train_s += time.perf_counter() - t0
                live = copy.deepcopy(models.unet.state_dict())
                stage.ema_unet.copy_to(models.unet.parameters())
                curve.append({"step": i + 1, "loss": round(parts["loss"], 4), **measure(models)})
                models.unet.load_state_dict(live)
                print(name, json.dumps(curve[-1]), flush=True)
                t0 = time.perf_counter()
        stage.apply_ema()
        row = {
            "layout": layout,
            "vlm_image_drop": float(drop),
            "copy_share": copy_share,
            "keep_weight": keep_weight,
            "change_weight": change_weight,
            "frozen": {"name_parts": freeze, "params": sum(p.numel() for p in frozen)},
            "params": sum(p.numel() for p in models.unet.parameters()),
            "train_seconds": round(train_s, 1),
            "curve": curve,
            "shapes": shapes_scores(models) if args.task == "edit" else None,
        }
        results["arms"][name] = row
        print(name, json.dumps({k: row[k] for k in ("train_seconds", "shapes")}), flush=True)
    write_report(args.out, results)


if __name__ == "__main__":
    main()
