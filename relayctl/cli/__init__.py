"""relayctl's command line: one module per command group; each parses options, calls core
and renders. `main` (the console script) and the `cli` group live in `main.py`."""

from relayctl.cli.main import cli, main

__all__ = ["cli", "main"]
