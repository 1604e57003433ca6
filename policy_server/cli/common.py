"""What every `dv-*` command shares: user errors print one red line and exit 2, never a traceback."""

from __future__ import annotations

import argparse

from rich.console import Console

# The exceptions our code raises for bad input (configs, files, names); anything else is a bug and
# keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def run_subcommand(parser: argparse.ArgumentParser, argv: list[str] | None, console: Console) -> int:
    """Parse `argv` and run the chosen subcommand's `func(args) -> exit code`."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
