"""Policy servers for tests: in a thread of the test process, or as a child process (to kill, stop or
signal it)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from policy_server.serving.server import PolicyServer

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def spawned(log: Path, *args: str, ready_timeout_s: float = 90) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m policy_server.cli.serve ARGS` and the endpoint from its READY line; killed on exit."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with log.open("a") as err:
        proc = subprocess.Popen([sys.executable, "-m", "policy_server.cli.serve", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], ready_timeout_s)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("READY "), f"no READY line ({line!r}); server log:\n{log.read_text()}"
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


@contextmanager
def serving(backend: Any, bind: str = "tcp://127.0.0.1:*", **kwargs: Any) -> Iterator[PolicyServer]:
    """A server in a thread of this process, stopped (and checked to have stopped) on exit."""
    server = PolicyServer(backend, bind, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(10)
        assert not thread.is_alive(), "serve_forever did not return after stop()"

