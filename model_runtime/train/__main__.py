"""``python -m model_runtime.train``: reproduce the shipped dreamlite-nano weights, or run single stages.

Examples::

    python -m model_runtime.train                       # the whole recipe into runs/nano, resumable
    python -m model_runtime.train --stage t2i --stage edit   # single stages (earlier ones must be done)
    python -m model_runtime.train --no-resume --force   # start again from scratch
    python -m model_runtime.train --run-dir runs/copy --copy-steps 600   # a new run with a copy stage
    python -m model_runtime.train --run-dir runs/e1300 --set edit_steps=1300 --set edit.lr=0.001
    python -m model_runtime.train --run-dir runs/nano --stage scene   # the scene stage on runs/nano/student
    python -m model_runtime.train --run-dir runs/nano --stage caption_teacher   # on runs/nano/scene/student
    python -m model_runtime.train --run-dir runs/nano --stage teacher_caption   # on runs/nano/scene/teacher
    python -m model_runtime.train plot --log runs/nano/train_log.json --out docs/img/nano-loss.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from model_runtime.train.configs import UNET_LAYOUTS

if TYPE_CHECKING:
    from model_runtime.train.recipe import RecipeConfig

DEFAULT_RUN = Path("runs/nano")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "dreamlite-nano"


def _run(args: argparse.Namespace) -> int:
    import torch

    from model_runtime.train.recipe import STAGES, Recipe, RecipeConfig

    torch.set_num_threads(args.threads)
    stages = tuple(args.stage) if args.stage else None  # None: the recipe's own order
    unknown = [s for s in stages or () if s not in STAGES]
    if unknown:
        print(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    config = RecipeConfig.quick() if args.quick else None
    saved = RecipeConfig.saved_or_default(args.run_dir)  # what the run's started stages were built with
    overrides = {
        key: value
        for key, value in (
            ("vae_precision", args.vae_precision),
            ("unet_layout", args.unet_layout),
            ("copy_steps", args.copy_steps),
        )
        if value is not None
    }
    if overrides:
        started = (args.run_dir / "recipe.json").is_file()
        if args.unet_layout is not None and started and saved.unet_layout != args.unet_layout:
            print(
                f"--unet-layout {args.unet_layout}: the run in {args.run_dir} was started with "
                f"{saved.unet_layout!r}; its checkpoints cannot change layout (use a new --run-dir)",
                file=sys.stderr,
            )
            return 2
        copy_done = (args.run_dir / "copy" / "done.json").is_file()
        if args.copy_steps is not None and copy_done and saved.copy_steps != args.copy_steps:
            print(
                f"--copy-steps {args.copy_steps}: the copy stage of the run in {args.run_dir} is done with "
                f"{saved.copy_steps} steps; the stages after it were or will be built on that (use a new "
                "--run-dir)",
                file=sys.stderr,
            )
            return 2
        config = replace(config if config is not None else saved, **overrides)
    if args.set:
        config = _with_settings(args, config if config is not None else saved, saved)
        if config is None:
            return 2
    recipe = Recipe(args.run_dir, config, resume=not args.no_resume, progress=not args.no_progress)
    t0 = time.perf_counter()
    timings = recipe.run(stages, out=None if args.out == "none" else Path(args.out), force=args.force)
    timings["total"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"run_dir": str(args.run_dir), "wall_seconds": timings}, indent=1))
    return 0


def _with_settings(
    args: argparse.Namespace, config: RecipeConfig, saved: RecipeConfig
) -> RecipeConfig | None:
    """``config`` with the ``--set KEY=VALUE`` settings, or None (reported) when one is invalid.

    A setting that would change a stage that has started is invalid: that stage's checkpoint and every later
    stage were built with ``saved``'s value.
    """
    from model_runtime.train.recipe import setting_stage

    for item in args.set:
        key, sep, raw = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError("expected KEY=VALUE, e.g. edit_steps=1300 or edit.lr=0.001")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw  # a bare string: --set unet_layout=topup
            changed = config.with_setting(key, value)
            stage = setting_stage(key)
        except ValueError as e:
            print(f"--set {item}: {e}", file=sys.stderr)
            return None
        started = any((args.run_dir / stage / name).is_file() for name in ("done.json", "ckpt.pt"))
        if started and saved.with_setting(key, value) != saved:
            print(
                f"--set {item}: stage {stage!r} of the run in {args.run_dir} has started with another value; "
                "branch a new run folder instead (copy the folders of the stages before it and its "
                "recipe.json, then --set there; docs/nano.md)",
                file=sys.stderr,
            )
            return None
        config = changed
    return config


def _plot(args: argparse.Namespace) -> int:
    from model_runtime.train.plots import plot_losses

    plot_losses(Path(args.log), Path(args.out))
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m model_runtime.train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the recipe (default)")
    # Every run option is accepted before and after ``run``. argparse writes a subparser's defaults over the
    # values parsed before it, so the subparser's copies default to "not given" (SUPPRESS): ``--out X run``
    # must not fall back to the default output, which is the shipped model folder.
    for p in (parser, run):

        def default(value: object, p: argparse.ArgumentParser = p) -> object:
            return value if p is parser else argparse.SUPPRESS

        p.add_argument(
            "--run-dir", type=Path, default=default(DEFAULT_RUN), help="run folder (checkpoints, logs)"
        )
        p.add_argument(
            "--stage", action="append", default=default(None), help="run only this stage (repeatable)"
        )
        p.add_argument(
            "--out",
            default=default(str(DEFAULT_OUT)),
            help="where the student folder is copied ('none' to skip)",
        )
        p.add_argument(
            "--no-resume", action="store_true", default=default(False), help="ignore existing checkpoints"
        )
        p.add_argument(
            "--force", action="store_true", default=default(False), help="re-run stages already marked done"
        )
        p.add_argument(
            "--quick", action="store_true", default=default(False), help="tiny sizes and steps (smoke test)"
        )
        p.add_argument("--threads", type=int, default=default(2), help="torch CPU threads")
        p.add_argument(
            "--vae-precision",
            choices=("auto", "bf16", "fp32"),
            default=default(None),
            help="the VAE stage's precision (default: the run's recipe, 'auto' = bf16 only where the CPU "
            "has native bf16; emulated bf16 is ~8x slower)",
        )
        p.add_argument(
            "--unet-layout",
            choices=tuple(UNET_LAYOUTS),
            default=default(None),
            help="the UNet's block layout for a new run (default: the run's recipe; 'mobile' = "
            "DreamLite-mobile's, the shipped one)",
        )
        p.add_argument(
            "--copy-steps",
            type=int,
            default=default(None),
            help="identity-edit steps before the edit stage, for a new run (default: the run's recipe; the "
            "shipped one has 0)",
        )
        p.add_argument("--no-progress", action="store_true", default=default(False), help="no progress bars")
        p.add_argument(
            "--set",
            action="append",
            default=default(None),
            metavar="KEY=VALUE",
            help="change one recipe setting (repeatable; VALUE as JSON): edit_steps=1300, edit.lr=0.001; "
            "refused for a stage that has started",
        )
    plot = sub.add_parser("plot", help="plot the loss log")
    plot.add_argument("--log", default=str(DEFAULT_RUN / "train_log.json"))
    plot.add_argument("--out", default="docs/img/nano-loss.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "plot":
        return _plot(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
