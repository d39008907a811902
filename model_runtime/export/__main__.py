"""``python -m model_runtime.export …``: the ``dreamlite export`` command on its own."""

from __future__ import annotations

import argparse
import sys

from model_runtime.errors import ModelRuntimeError
from model_runtime.export.cli import register


def main(argv: list[str] | None = None) -> int:
    """Parse ``export`` options and run it (``--help`` lists them)."""
    parser = argparse.ArgumentParser(prog="python -m model_runtime.export")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["export", *(sys.argv[1:] if argv is None else argv)])
    try:
        status: int = args.handler(args)
    except ModelRuntimeError as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
