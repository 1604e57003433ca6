"""`PolicyWorker`: every policy call runs on one daemon thread, so the control loop never blocks on the network.

The loop submits a job when the worker is idle and polls for its result with a timeout it chooses (at most
what is left of the tick). A job that outlives its deadline is abandoned by the loop: its result still arrives,
tagged with the job's id, and the loop discards it. One thread owns the policy (and so the ZeroMQ socket
inside `RemotePolicy`), which is what zmq requires.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robot.policy import Policy, PolicyFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Done:
    """A finished job: its id, what it returned (a `PolicyFailure` if it raised), and when it ran."""

    job: int
    value: Any
    started_ns: int
    finished_ns: int


class PolicyWorker:
    """Runs `job(policy)` callables one at a time on a daemon thread."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._job: tuple[int, Callable[[Policy], Any]] | None = None
        self._running = False
        self._done: Done | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="policy-worker", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._job is not None or self._running

    def try_submit(self, job: Callable[[Policy], Any]) -> int | None:
        """Queue `job` and return its id, or None if a job is still queued or running."""
        with self._cond:
            if self._closing or self._job is not None or self._running:
                return None
            job_id = next(self._ids)
            self._job = (job_id, job)
            self._done = None
            self._cond.notify_all()
            return job_id

    def result(self, timeout_s: float = 0.0) -> Done | None:
        """The finished job not yet collected, waiting up to `timeout_s` for it; None if there is none yet."""
        with self._cond:
            if self._done is None and timeout_s > 0:
                self._cond.wait_for(lambda: self._done is not None, timeout=timeout_s)
            done, self._done = self._done, None
            return done

    def call(self, job: Callable[[Policy], Any], timeout_s: float) -> Any:
        """Run `job` and wait for it (between episodes, e.g. `reset`): its value, or a timeout `PolicyFailure`
        if the worker was busy or the job took longer than `timeout_s` (its late result is then discarded)."""
        deadline = time.monotonic() + timeout_s
        job_id = self.try_submit(job)
        while job_id is None and time.monotonic() < deadline:  # an abandoned job may still be running
            self.result(0.05)
            job_id = self.try_submit(job)
        while job_id is not None and (left := deadline - time.monotonic()) > 0:
            done = self.result(left)
            if done is not None and done.job == job_id:
                return done.value
        return PolicyFailure("timeout", f"the policy did not answer within {timeout_s:.1f} s")

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread (bounded: a hung policy call cannot hang shutdown) and close the policy."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.policy.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._closing)
                if self._closing:
                    return
                assert self._job is not None
                (job_id, job), self._job, self._running = self._job, None, True
            started = time.monotonic_ns()
            try:
                value = job(self.policy)
            except Exception as exc:  # noqa: BLE001 - a policy bug must reach the loop as a failure, not kill it
                log.exception("policy call failed")
                value = PolicyFailure("internal", f"{type(exc).__name__}: {exc}")
            with self._cond:
                self._done = Done(job_id, value, started, time.monotonic_ns())
                self._running = False
                self._cond.notify_all()
