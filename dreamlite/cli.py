"""Stage ① command line: ``dreamlite <command>``.

Each area registers its own sub-commands from a light module (no torch/onnxruntime/fastapi at import);
handlers import what they need when they run. Every expected failure — a caller's mistake or a model
that cannot be loaded — ends with one ``dreamlite: error: …`` line and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

# (module, function) pairs that add sub-commands; a missing optional module skips its commands.
REGISTRARS: list[tuple[str, str]] = [
    ("model_runtime.cli", "register"),
    ("server.cli", "register"),
    ("model_runtime.export.cli", "register"),
    ("model_runtime.parity.cli", "register"),
    ("model_runtime.train.cli_eval", "add_eval_parser"),
]


# Commands that must run without torch (a phone stand-in); importing diffusers/transformers would load it.
TORCH_FREE_COMMANDS = {"device-sim", "bundle-verify"}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="dreamlite", description="DreamLite serving, runtime and QA tools")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, function in REGISTRARS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and module_name.startswith(err.name):
                continue  # that area is not part of this install
            raise
        getattr(module, function)(sub)
    return parser


def _quiet_frameworks() -> None:
    """Silence diffusers/transformers load chatter (progress bars, ignored-config notes) on the console."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog
    except ImportError:  # pragma: no cover - both are core dependencies
        return
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()  # type: ignore[no-untyped-call]
    tlog.disable_progress_bar()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen command, turn expected failures into one error line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.command not in TORCH_FREE_COMMANDS:
        _quiet_frameworks()
    from model_runtime.errors import ModelRuntimeError

    try:
        handler: Any = args.handler
        status: int = handler(args)
    except ModelRuntimeError as err:
        print(f"dreamlite: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dreamlite: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        message = f"{type(err).__name__}: {err} (run with --debug for a traceback)"
        print(f"dreamlite: error: {message}", file=sys.stderr)
        return 1
    return status
