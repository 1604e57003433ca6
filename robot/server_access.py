"""Reaching the policy server from the robot: which key, a pre-flight `hello`, and a local `dv-serve` for the sim.

`dv-robot` (and `dv-bench robot`) call these before anything moves; `RemotePolicy` (`robot.policy`) carries the
episodes' own requests. A local server is a subprocess, so this process never imports torch.
"""

from __future__ import annotations

import contextlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from dreamvla_client.security import is_loopback
from robot.errors import UsageError, opening

if TYPE_CHECKING:
    from dreamvla_client.protocol import RobotContract
    from robot.launch import LaunchConfig

DEFAULT_CKPT = Path("runs/robot-sim-tiny")
SERVER_READY_TIMEOUT_S = 180.0
SERVER_CHECK = ("that dv-serve runs at that address (it prints READY <address>), the address (--server or "
                "server.address) and the key (--auth-key-file or server.auth_key_file)")

console = Console()


def server_access(key_file: Path | None, launch: LaunchConfig | None, endpoint: str | None,
                  allow_unauthenticated_remote: bool) -> tuple[bytes | None, bool]:
    """(key, allow_unauthenticated_remote) from the command line, else the launch file; a server off loopback needs
    one of them (anyone on that network could otherwise read and answer the robot's requests)."""
    from robot.launch.config import read_key

    try:
        key = read_key(key_file) if key_file is not None else (launch.server.key() if launch else None)
    except ValueError as exc:
        raise UsageError(f"--auth-key-file: {exc}") from None
    allow = allow_unauthenticated_remote or (launch is not None and launch.server.allow_unauthenticated_remote)
    if endpoint is not None and not is_loopback(endpoint) and key is None and not allow:
        raise UsageError(f"the policy server {endpoint} is not on loopback: pass --auth-key-file FILE (its key), or "
                         "--allow-unauthenticated-remote to talk to it without one")
    return key, allow


def check_server(endpoint: str, contract: RobotContract, key: bytes | None, allow_unauthenticated_remote: bool,
                 timeout_s: float) -> None:
    """Pre-flight: the server answers a `hello` with this robot's contract (and key) within `timeout_s`, before
    anything moves; the episodes' own requests then go through `RemotePolicy`."""
    from dreamvla_client.client import PolicyClient, PolicyError

    with opening(f"policy server at {endpoint}", SERVER_CHECK, PolicyError), \
            PolicyClient(endpoint, contract, client_id="dv-robot-preflight", key=key, retries=1,
                         allow_unauthenticated_remote=allow_unauthenticated_remote,
                         control_timeout_s=timeout_s) as client:
        client.hello()


@contextlib.contextmanager
def local_server(ckpt: Path, log_path: Path, ready_timeout_s: float = SERVER_READY_TIMEOUT_S) -> Iterator[str]:
    """A `dv-serve` subprocess on a free loopback port serving `ckpt` (created tiny if missing); yields its
    endpoint and terminates it on exit. Its log goes to `log_path`."""
    if not ckpt.exists():
        console.print(f"creating a tiny random-weight checkpoint at {ckpt} (dv-model init --config tiny)")
        subprocess.run([sys.executable, "-m", "policy_server.cli.model", "init", "--config", "tiny", "--out",
                        str(ckpt)], check=True, stdout=subprocess.DEVNULL)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as server_log:
        proc = subprocess.Popen([sys.executable, "-m", "policy_server.cli.serve", "--ckpt", str(ckpt),
                                 "--bind", "tcp://127.0.0.1:*"], stdout=subprocess.PIPE, stderr=server_log, text=True)
        try:
            yield _await_ready(proc, ready_timeout_s, log_path)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _await_ready(proc: subprocess.Popen[str], timeout_s: float, log_path: Path) -> str:
    """The endpoint from the server's `READY <endpoint>` line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    console.print("starting dv-serve (loading the model) ...")
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return line.split()[1]
            if not line and proc.poll() is not None:
                break
    raise UsageError(f"dv-serve did not become ready within {timeout_s:.0f} s (exit code {proc.poll()}); "
                     f"see {log_path}")
