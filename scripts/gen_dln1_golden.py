"""Rewrite (or check) model_runtime/assets/dln1_golden.json from the numpy DLN-1 reference.

Usage (from the repository root):
    python scripts/gen_dln1_golden.py            # rewrite the shipped file
    python scripts/gen_dln1_golden.py --check    # exit 1 if the shipped file is stale
    python scripts/gen_dln1_golden.py --output /tmp/golden.json

The output is deterministic (no timestamps), so a rewrite of an unchanged implementation is a no-op.
Changing the golden values means changing DLN-1 itself: every phone port breaks, so bump the spec version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/gen_dln1_golden.py` without an install
    sys.path.insert(0, str(REPO_ROOT))

from model_runtime.noise_dln1 import GOLDEN_PATH, golden_json_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=GOLDEN_PATH, help="file to write (default: %(default)s)"
    )
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing")
    args = parser.parse_args(argv)
    text = golden_json_text()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            print(f"{args.output} is stale; rerun scripts/gen_dln1_golden.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
