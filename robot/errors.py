"""The two ways a `dv-*` command refuses to start, shared by every command and the library code they call.

`UsageError`: the command line or the launch file asks for something that cannot run. `DeviceUnavailable`: a
device (camera, arm, gripper, policy server, e-stop console) is missing or failing before anything moved. Both end
a command with one line and exit code 2 (`robot.cli_support.print_error`), never with a traceback. They live
here, not in a CLI module, because the workcell and the policy-server pre-flight raise them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UsageError(Exception):
    """A command line or launch file that cannot run; the message says why."""


class DeviceUnavailable(Exception):
    """A device that is missing or failing before anything moved. Its message is one line: the device, the problem
    and what to check; every dv-* command ends with it and exit code 2, never with a traceback."""

    def __init__(self, device: str, problem: str, check: str) -> None:
        problem = " ".join(problem.split()).removeprefix(f"{device}: ")
        super().__init__(f"{device}: {problem}; check {check}")
        self.device = device


@contextlib.contextmanager
def opening(device: str, check: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn the `errors` that opening `device` raises into a `DeviceUnavailable` naming it (the cause stays
    chained for the debug log). Only the named types: a bug is not a missing device."""
    try:
        yield
    except errors as exc:
        raise DeviceUnavailable(device, str(exc) or type(exc).__name__, check) from exc
