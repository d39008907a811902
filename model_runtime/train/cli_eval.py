"""``dreamlite eval shapes``: ShapesEval through the public pipeline, printed per category and saved as JSON.

Registered into the ``dreamlite`` command by :func:`add_eval_parser`; the sub-command sets ``func`` (called
with the parsed arguments, returns the exit status).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``eval shapes`` on the ``dreamlite`` command's sub-parsers."""
    from model_runtime.cli import add_model_options

    evalp = subparsers.add_parser("eval", help="evaluate a model")
    sub = evalp.add_subparsers(dest="eval_command", required=True)
    p = sub.add_parser(
        "shapes",
        help="ShapesEval: colour/shape/count/position of generated images and edit correctness",
        description="Score a model on the fixed ShapesEval prompt sets (docs/nano.md).",
    )
    add_model_options(p)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout")
    p.add_argument("--tasks", default="generate,edit", help="comma-separated: generate, edit")
    p.add_argument("--seeds", default="1000,1001", help="comma-separated noise seeds")
    p.add_argument("--limit", type=int, default=None, help="only this many prompts per task (quick check)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument(
        "--ceiling",
        action="store_true",
        help="score the expected renders passed through the model's VAE instead of sampled images "
        "(the best score this model's VAE allows; torch only)",
    )
    p.add_argument(
        "--edits-as-captions",
        action="store_true",
        help="make each edit by generating its target scene's caption instead (no source image): the "
        "score of an edit model that reads perfectly but copies nothing, the text path's ceiling",
    )
    p.set_defaults(handler=run_shapes_eval, func=run_shapes_eval)


def run_shapes_eval(args: argparse.Namespace) -> int:
    """Run ShapesEval with the parsed arguments; prints the table, writes the JSON."""
    from model_runtime.cli import load_pipeline_from_args
    from model_runtime.train import shapes_eval

    if args.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    if args.ceiling:
        return _run_ceiling(args)
    pipeline = load_pipeline_from_args(args)
    steps = args.steps
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    seeds = tuple(int(s) for s in args.seeds.split(","))
    cfg = pipeline.config
    meta: dict[str, object] = {
        "model": str(args.model or args.bundle or cfg.model_id),
        "model_id": cfg.model_id,
        "backend": args.backend,
        "dtype": args.dtype,
        "steps": steps if steps is not None else cfg.default_steps,
        "guidance": "none"
        if cfg.variant == "mobile"
        else f"cfg {cfg.guidance_scale}/{cfg.image_guidance_scale}",
    }
    backend = pipeline.backend
    if hasattr(backend, "precision"):  # the bundle graph that ran (a w8a16 report must say so)
        meta["precision"] = backend.precision
    if hasattr(backend, "target"):
        meta["target"] = backend.target.name
    make_images = shapes_eval.pipeline_image_fn(pipeline, steps)
    if args.edits_as_captions:
        make_images = shapes_eval.edits_as_captions(make_images)
        meta["edits"] = "generated from the target scene's caption (the text path's ceiling)"
    report = shapes_eval.evaluate(
        make_images,
        split=args.split,
        tasks=tasks,
        seeds=seeds,
        limit=args.limit,
        batch_size=args.batch_size,
        meta=meta,
    )
    print(report.table())
    if args.out is not None:
        shapes_eval.write_report(report, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_ceiling(args: argparse.Namespace) -> int:
    """ShapesEval of the expected renders through the model folder's VAE (encode, decode)."""
    import numpy as np
    from diffusers import AutoencoderTiny
    from numpy.typing import NDArray

    from model_runtime.assets import default_model_dir
    from model_runtime.errors import InvalidInputError
    from model_runtime.train import shapes_eval, vae_fit

    if args.backend != "torch":
        raise InvalidInputError("--ceiling", "needs the torch backend.", allowed="torch", given=args.backend)
    folder = Path(args.model) if args.model else default_model_dir()
    vae = AutoencoderTiny.from_pretrained(str(folder / "vae")).float().eval()  # type: ignore[no-untyped-call]

    def through_vae(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        out: NDArray[np.uint8] = vae_fit.reconstruct(vae, image[None])[0]
        return out

    report = shapes_eval.evaluate(
        shapes_eval.ground_truth_image_fn(through_vae),
        split=args.split,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        seeds=(0,),
        limit=args.limit,
        batch_size=args.batch_size,
        meta={
            "model": str(args.model) if args.model else "embedded dreamlite-nano",
            "ceiling": "expected renders through the model's VAE",
        },
    )
    print(report.table())
    if args.out is not None:
        shapes_eval.write_report(report, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
