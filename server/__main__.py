"""Stage ① entry point: ``python -m server [serve options]`` — the same as ``dreamlite serve``.

It builds only the ``serve`` command, so the server starts even when another area's sub-commands do not
import.
"""

import argparse
import sys

from model_runtime.errors import ModelRuntimeError
from server.cli import register


def main(argv: list[str] | None = None) -> int:
    """Parse the serve options and run the server; expected failures end with one error line."""
    parser = argparse.ArgumentParser(prog="python -m server")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        status: int = args.handler(args)
    except ModelRuntimeError as err:
        print(f"dreamlite: error: {err}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
