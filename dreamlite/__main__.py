"""``python -m dreamlite`` runs the command line."""

import sys

from dreamlite.cli import main

sys.exit(main())
