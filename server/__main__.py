"""Stage ① entry point: ``python -m server`` is ``dreamlite serve``."""

import sys

from dreamlite.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
