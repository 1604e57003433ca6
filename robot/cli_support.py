"""What every `dv-*` command line shares: logging, the one-line error, the override banner, and signal handling.

These are about the terminal and the process, not the devices: `dv-robot`, `dv-teleop`, `dv-calib` and
`dv-launch` import them from here, and never from another command's module.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Protocol

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text


def print_error(out: Console, exc: BaseException) -> int:
    """One line (never wrapped, never read as markup), in red; the exit code of a command that cannot run: 2."""
    out.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True)
    return 2


def announce_overrides(out: Console, overrides: list[str]) -> None:
    """Each safety override in force, in red (at the start and at the end of every run)."""
    for note in overrides:
        out.print(Text(note, style="bold red"), soft_wrap=True)


def add_log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def configure_logging(level: str) -> None:
    """Logs go to stderr through rich, so stdout keeps only the tables and summaries."""
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])


class Stoppable(Protocol):
    def request_stop(self, reason: str, code: str = ...) -> None: ...


def stop_on_signals(runner: Stoppable) -> None:
    """Ctrl-C, dv-launch's SIGINT/SIGTERM, or PR_SET_PDEATHSIG's SIGTERM: stop the arm and let the run finish with
    its summary, the episode recorded as aborted:interrupted. The stop goes through the runner's thread-safe hook
    on a thread of its own (the handler runs on the loop's thread, which may hold the runner's lock), never
    through an exception in the middle of a tick."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: threading.Thread(
            target=runner.request_stop, args=(signal.Signals(signum).name, "interrupted")).start())
