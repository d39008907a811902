"""Stage ① command line: ``dreamlite generate`` and ``dreamlite edit`` on the local pipeline.

Bad input (a missing folder, a size the UNet cannot take, an unreadable image, an empty prompt) ends with
one ``dreamlite: error: …`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model_runtime.errors import InvalidInputError

_OUT_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def parse_size(text: str, field: str = "--size") -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT``."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InvalidInputError(field, "must look like WIDTHxHEIGHT.", allowed="e.g. 512x512", given=text)
    return int(parts[0]), int(parts[1])


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options that choose the model and backend (shared by generate, edit and eval)."""
    parser.add_argument(
        "--model", metavar="DIR", help="DreamLite folder (official layout); default: the embedded model"
    )
    parser.add_argument(
        "--backend", default="torch", choices=["torch", "onnx", "qnn"], help="runtime backend (default torch)"
    )
    parser.add_argument("--bundle", metavar="DIR", help="device bundle (onnx and qnn backends)")
    parser.add_argument("--target", default=None, help="QNN target SoC for --backend qnn, e.g. sm8650")
    parser.add_argument(
        "--precision",
        default=None,
        help="bundle graph precision: fp32, fp16, w8a16 (onnx); w8a16 (default) or fp16 contexts (qnn)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (torch backend)")


def _add_sample_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="the text prompt / edit instruction")
    parser.add_argument("--seed", type=int, default=42, help="initial-noise seed, 0 … 2**64-1 (default 42)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 4)")
    parser.add_argument("--noise", default="torch-cpu", choices=["torch-cpu", "dln1"])
    parser.add_argument("--out", required=True, metavar="OUT.png", help="output image (.png, .jpg, .webp)")
    parser.add_argument("--trace", metavar="TRACE.npz", help="also write every intermediate to this file")
    parser.add_argument("--no-metadata", action="store_true", help="do not embed the recipe in the PNG")
    add_model_options(parser)


def register(sub: Any) -> None:
    """Add ``generate`` and ``edit`` to the ``dreamlite`` sub-command parser."""
    gen = sub.add_parser("generate", help="text → image")
    gen.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 32 (default: the model's)")
    _add_sample_options(gen)
    gen.set_defaults(handler=run_sample)
    edit = sub.add_parser("edit", help="image + instruction → image")
    edit.add_argument("--image", required=True, metavar="SRC", help="source image (PNG, JPEG, WebP)")
    edit.add_argument("--size", default=None, help="output WIDTHxHEIGHT (default: the source size)")
    edit.add_argument(
        "--working-size",
        default=None,
        help="WIDTHxHEIGHT the model computes at (default: the model's, 1024²)",
    )
    _add_sample_options(edit)
    edit.set_defaults(handler=run_sample)


def load_pipeline_from_args(args: argparse.Namespace) -> Any:
    """Build the pipeline the model/backend options ask for."""
    from model_runtime.assets import default_model_dir
    from model_runtime.pipeline import load_pipeline

    if args.backend == "torch":
        model = Path(args.model) if args.model else default_model_dir()
        return load_pipeline(model, backend="torch", device=args.device, dtype=args.dtype)
    if not args.bundle:
        raise InvalidInputError("--bundle", "is required for the onnx and qnn backends.", given=None)
    options: dict[str, Any] = {}
    if args.target:
        options["target"] = args.target
    if args.precision:
        options["precision"] = args.precision
    return load_pipeline(Path(args.bundle), backend=args.backend, **options)


def run_sample(args: argparse.Namespace) -> int:
    """Handler of ``generate`` and ``edit``."""
    from model_runtime.preprocess import decode_image
    from model_runtime.recipe import build_recipe, encode_image
    from model_runtime.types import SampleSpec

    out = Path(args.out)
    fmt = _OUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise InvalidInputError(
            "--out", "must end in a known image extension.", allowed=", ".join(_OUT_FORMATS), given=args.out
        )
    if not out.parent.exists():
        raise InvalidInputError("--out", "is in a folder that does not exist.", given=str(out.parent))
    width = height = None
    if args.size:
        width, height = parse_size(args.size)
    image = working = None
    if args.command == "edit":
        source = Path(args.image)
        if not source.is_file():
            raise InvalidInputError("--image", "is not a readable file.", given=args.image)
        image = decode_image(source, field="--image")
        if args.working_size:
            working = parse_size(args.working_size, "--working-size")
    spec = SampleSpec(
        task=args.command,
        prompt=args.prompt,
        seed=args.seed,
        width=width,
        height=height,
        steps=args.steps,
        noise=args.noise,
        image=image,
        working_size=working,
    )
    pipeline = load_pipeline_from_args(args)
    pipeline.plan(spec)  # validate before any compute
    result = pipeline.run([spec], trace=bool(args.trace))[0]
    assert result.image is not None
    recipe = build_recipe(result, pipeline)
    data = encode_image(result.image, fmt, recipe=None if args.no_metadata else recipe)  # type: ignore[arg-type]
    out.write_bytes(data)
    if args.trace and result.trace is not None:
        result.trace.meta["recipe"] = recipe
        result.trace.save_npz(args.trace)
    summary = {
        k: recipe[k] for k in ("task", "seed", "noise", "steps", "size", "backend", "dtype", "rgb8_sha256")
    }
    print(json.dumps({"out": str(out), **summary}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run only the generate/edit part of the CLI (the full entry point is :mod:`dreamlite.cli`)."""
    parser = argparse.ArgumentParser(prog="dreamlite")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    handler: Any = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
