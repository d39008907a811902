"""``dreamlite eval shapes``: ShapesEval through the public pipeline, printed per category and saved as JSON.

Registered into the ``dreamlite`` command by :func:`add_eval_parser`; the sub-command sets ``func`` (called
with the parsed arguments, returns the exit status).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "dreamlite-nano"


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``eval shapes`` on the ``dreamlite`` command's sub-parsers."""
    evalp = subparsers.add_parser("eval", help="evaluate a model")
    sub = evalp.add_subparsers(dest="eval_command", required=True)
    p = sub.add_parser(
        "shapes",
        help="ShapesEval: colour/shape/count/position of generated images and edit correctness",
        description="Score a model on the fixed ShapesEval prompt sets (docs/nano.md).",
    )
    p.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="model folder (torch) or bundle (onnx, qnn)"
    )
    p.add_argument("--backend", choices=("torch", "onnx", "qnn"), default="torch")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout")
    p.add_argument("--tasks", default="generate,edit", help="comma-separated: generate, edit")
    p.add_argument("--seeds", default="1000,1001", help="comma-separated noise seeds")
    p.add_argument("--limit", type=int, default=None, help="only this many prompts per task (quick check)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.set_defaults(func=run_shapes_eval)


def run_shapes_eval(args: argparse.Namespace) -> int:
    """Run ShapesEval with the parsed arguments; prints the table, writes the JSON."""
    from model_runtime.pipeline import load_pipeline
    from model_runtime.train import shapes_eval

    if args.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    pipeline = load_pipeline(str(args.model), backend=args.backend, dtype=args.dtype)
    steps = args.steps
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    seeds = tuple(int(s) for s in args.seeds.split(","))
    meta = {
        "model": str(args.model),
        "backend": args.backend,
        "dtype": args.dtype,
        "steps": steps if steps is not None else pipeline.config.default_steps,
        "guidance": "none"
        if pipeline.config.variant == "mobile"
        else f"cfg {pipeline.config.guidance_scale}/{pipeline.config.image_guidance_scale}",
    }
    report = shapes_eval.evaluate(
        shapes_eval.pipeline_image_fn(pipeline, steps),
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
    else:
        print(json.dumps({"generate": report.generate, "edit": report.edit}))
    return 0
