"""Stage ① command line: ``dreamlite export`` (build a device bundle) and ``dreamlite bundle-verify``.

Light at import (no torch/onnx): handlers import the exporter when they run. Bad options end with one
``dreamlite: error: …`` line naming the option (the entry point turns ``ModelRuntimeError`` into that).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from model_runtime.errors import InvalidInputError


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in text.split(",") if p.strip())
    return () if items == ("none",) else items


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in _csv(text))
    except ValueError as err:
        raise InvalidInputError(option, "must be a comma-separated list of integers.", given=text) from err


def register(sub: Any) -> None:
    """Add ``export`` and ``bundle-verify`` to the ``dreamlite`` sub-command parser."""
    ex = sub.add_parser(
        "export",
        help="build a device bundle: ONNX fp32/fp16, QDQ w8a16, QNN context binaries, manifest",
        description="Export a DreamLite folder to a content-addressed device bundle (docs/bundle.md).",
    )
    ex.add_argument(
        "--model", metavar="DIR", help="DreamLite folder (official layout); default: the embedded model"
    )
    ex.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to create")
    ex.add_argument(
        "--size", action="append", default=None, help="working size WxH (repeatable); default: the model's"
    )
    ex.add_argument(
        "--seq-len", type=int, default=128, help="static text length of the UNet graph (default 128)"
    )
    ex.add_argument(
        "--targets",
        default=None,
        help="QNN targets, comma-separated (sm8550, sm8650, sm8750) or none (default: sm8650 with w8a16)",
    )
    ex.add_argument(
        "--qnn-precision",
        default="w8a16",
        help="QNN context precisions, comma-separated: w8a16 (from the QDQ graph; default) and/or fp16 (the "
        "fp32 graph run by the HTP in float16: closer to the server, slower)",
    )
    ex.add_argument(
        "--precision", default="fp32,fp16,w8a16", help="graph precisions (default fp32,fp16,w8a16)"
    )
    ex.add_argument(
        "--steps",
        default="",
        help="extra step counts with schedule tables (the model's default is always in)",
    )
    ex.add_argument(
        "--fuse", default="none", help="norm fusions for float graphs: rmsnorm,groupnorm or none (default)"
    )
    ex.add_argument(
        "--qdq-groupnorm",
        default="reductions",
        help="GroupNorm in the w8a16 graph: reductions (reshape-free, default) or reshape (the exporter's "
        "form, miscomputed by the QNN HTP compiler in the nano UNet)",
    )
    ex.add_argument(
        "--calibration", metavar="DIR", help="calibration folder (prompts.json or <component>/*.npz)"
    )
    ex.add_argument("--calibration-out", metavar="DIR", help="also write the calibration tensors here")
    ex.add_argument(
        "--calibration-prompts", type=int, default=4, help="built-in prompts per task (default 4)"
    )
    ex.add_argument(
        "--parity", default="full", choices=["full", "graphs", "none"], help="parity measured at export"
    )
    ex.add_argument(
        "--qnn-parity-samples",
        type=int,
        default=4,
        help="held-out samples per graph run on the emulator at export (default 4, 0 = all)",
    )
    ex.add_argument(
        "--no-parity-qnn", action="store_true", help="skip emulator parity runs (slow on the real model)"
    )
    ex.add_argument(
        "--parity-calibration",
        type=int,
        default=4,
        metavar="N",
        help="requests used to calibrate the manifest's parity tolerances on the emulator (0: defaults)",
    )
    ex.add_argument(
        "--text-encoder", default="copy", choices=["copy", "none"], help="ship the host text encoder"
    )
    ex.add_argument(
        "--no-text-encoder-onnx",
        action="store_true",
        help="do not export Qwen3-VL to ONNX (the bundle backends then run the torch host copy)",
    )
    ex.add_argument(
        "--text-max-tokens",
        type=int,
        default=None,
        help="static token length of the text-encoder graph (default: seq-len + the larger drop_idx)",
    )
    ex.add_argument(
        "--threads", type=int, default=1, help="torch threads for calibration and tracing (default 1)"
    )
    ex.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    ex.set_defaults(handler=run_export)
    ver = sub.add_parser(
        "bundle-verify", help="check every file of a bundle against its manifest; print its id"
    )
    ver.add_argument("bundle", metavar="BUNDLE")
    ver.add_argument("--id", default=None, help="expected bundle id")
    ver.set_defaults(handler=run_verify)


def _sizes(values: list[str] | None) -> tuple[tuple[int, int], ...]:
    from model_runtime.cli import parse_size

    return tuple(parse_size(v) for v in values or [])


def _default_targets(precisions: tuple[str, ...]) -> tuple[str, ...]:
    """sm8650 (Xiaomi 14) when w8a16 graphs are built, else no QNN binaries."""
    return ("sm8650",) if "w8a16" in precisions else ()


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~model_runtime.export.config.ExportConfig` the options ask for."""
    from model_runtime.export.config import ExportConfig, QuantSettings

    precisions = _csv(args.precision)
    return ExportConfig(
        sizes=_sizes(args.size),
        seq_len=args.seq_len,
        precisions=precisions,
        targets=_default_targets(precisions) if args.targets is None else _csv(args.targets),
        qnn_precisions=_csv(args.qnn_precision),
        steps=_ints(args.steps, "--steps"),
        fuse=_csv(args.fuse),
        quant=QuantSettings(groupnorm=args.qdq_groupnorm),
        calibration_dir=Path(args.calibration) if args.calibration else None,
        calibration_prompts=args.calibration_prompts,
        parity=args.parity,
        parity_qnn=not args.no_parity_qnn,
        qnn_parity_samples=args.qnn_parity_samples,
        parity_calibration=args.parity_calibration,
        text_encoder=args.text_encoder,
        text_encoder_onnx=not args.no_text_encoder_onnx,
        text_max_tokens=args.text_max_tokens,
        threads=args.threads,
    )


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``dreamlite export``: prints one JSON summary line."""
    from model_runtime.assets import default_model_dir
    from model_runtime.export.build import export_bundle

    config = config_from_args(args)
    model = Path(args.model) if args.model else default_model_dir()
    result = export_bundle(
        model,
        Path(args.out),
        config,
        force=args.force,
        calibration_out=Path(args.calibration_out) if args.calibration_out else None,
    )
    summary = {
        "bundle": str(result.bundle),
        "bundle_id": result.bundle_id,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "parity": result.parity,
        "bytes": result.sizes_bytes,
    }
    print(json.dumps(summary))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Handler of ``dreamlite bundle-verify``."""
    from model_runtime.bundle import open_bundle

    bundle = open_bundle(args.bundle, verify=True, expected_id=args.id)
    print(
        json.dumps(
            {"bundle": str(bundle.root), "bundle_id": bundle.bundle_id, "files": len(bundle.manifest.files)}
        )
    )
    return 0
