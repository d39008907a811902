"""The ``dreamlite`` command line: the composition root that wires runtime and server sub-commands."""
