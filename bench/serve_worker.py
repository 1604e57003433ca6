"""A benchmark client process for `dv-bench serve`: `PolicyClient`s driven by JSON lines on stdin.

Why a process per client: clients in threads of one interpreter would share its GIL, so their msgpack
encoding and polling would be serialized and the throughput numbers would measure Python in the
benchmark process, not the server. Torch-free, like the robot PC's client.

Commands (one JSON object per line on stdin; one JSON object per line answered on stdout):
    {"op": "connect", "endpoint": E}
        hello and reset now, so that a later window does not pay for them; answers {}
    {"op": "latency", "endpoint": E, "n": N}
        N sequential `infer` calls; answers {"ms": [round trip per call]}
    {"op": "window", "endpoint": E, "start": T, "warmup_s": W, "duration_s": D}
        `infer` back to back from T - W until T + D (T on the shared CLOCK_MONOTONIC); answers
        {"count": requests completed inside [T, T + D], "ms": their round trips}
    {"op": "quit"}
Each endpoint gets one client (hello and reset on first use), kept for later commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from dreamvla_client.client import PolicyClient
from dreamvla_client.contract import STATE_RANGES
from dreamvla_client.conventions import STATE_LAYOUT
from dreamvla_client.protocol import CameraContract, RobotContract

CAMERAS = ("static", "wrist")
IMAGE_SIZE = 224
CONTROL_RATE_HZ = 15.0
INSTRUCTION = "pick up the bottle"
DEADLINE_S = 30.0  # generous: a benchmark on a loaded machine must measure slow replies, not time out

T = TypeVar("T")


def robot_contract(image_size: int = IMAGE_SIZE) -> RobotContract:
    """The robot side of the benchmark payload: DreamVLA's two RGB cameras at `image_size`, 7-D state."""
    return RobotContract(cameras=[CameraContract(name=c, height=image_size, width=image_size) for c in CAMERAS],
                         state_layout=list(STATE_LAYOUT), control_rate_hz=CONTROL_RATE_HZ, chunk_length=3)


def payload(seed: int, image_size: int = IMAGE_SIZE) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """2 x (image_size, image_size, 3) uint8 images and a 7-D float32 state within the physical ranges the
    server holds states to, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for c in CAMERAS}
    low, high = np.array([STATE_RANGES[name] for name in STATE_LAYOUT]).T
    return images, rng.uniform(low, high).astype(np.float32)


def timed(call: Callable[[], T]) -> tuple[float, T]:
    """The one timing helper of `dv-bench serve`: (milliseconds of wall clock, result) of one call.
    perf_counter, because it is monotonic and the finest clock Python has."""
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1e3, result


def time_calls(call: Callable[[], object], n: int) -> list[float]:
    """Milliseconds per call for n sequential calls."""
    return [timed(call)[0] for _ in range(n)]


def run_window(call: Callable[[], object], start: float, warmup_s: float, duration_s: float
               ) -> tuple[int, list[float]]:
    """Call back to back from start - warmup_s to start + duration_s (time.monotonic, which every process
    on the machine shares); count and time only the calls that both began and ended inside the window.

    The warm-up keeps the server's view of active sessions (refreshed once a second) current when the
    window opens, so batching waits for the right number of clients."""
    end = start + duration_s
    while time.monotonic() < start - warmup_s:
        time.sleep(0.001)
    samples = []
    while (now := time.monotonic()) < end:
        elapsed, _ = timed(call)
        if now >= start and time.monotonic() <= end:
            samples.append(elapsed)
    return len(samples), samples


class Worker:
    """One client per endpoint, all sending the same payload (this worker's seed)."""

    def __init__(self, client_id: str, seed: int, image_size: int) -> None:
        self.client_id, self.image_size = client_id, image_size
        self.images, self.state = payload(seed, image_size)
        self._clients: dict[str, PolicyClient] = {}

    def _client(self, endpoint: str) -> PolicyClient:
        if endpoint not in self._clients:
            client = PolicyClient(endpoint, robot_contract(self.image_size), client_id=self.client_id,
                                  deadline_s=DEADLINE_S, control_timeout_s=DEADLINE_S)
            client.hello()
            client.reset("bench", "bench-0", INSTRUCTION, seed=0)
            self._clients[endpoint] = client
        return self._clients[endpoint]

    def infer_call(self, endpoint: str) -> Callable[[], object]:
        client = self._client(endpoint)

        def call() -> object:
            now = time.monotonic_ns()
            return client.infer("bench", self.images, self.state, {"static": now, "wrist": now, "state": now})

        return call

    def handle(self, cmd: dict) -> dict:
        if cmd["op"] == "connect":
            self._client(cmd["endpoint"])
            return {}
        if cmd["op"] == "latency":
            return {"ms": time_calls(self.infer_call(cmd["endpoint"]), int(cmd["n"]))}
        if cmd["op"] == "window":
            call = self.infer_call(cmd["endpoint"])
            count, ms = run_window(call, float(cmd["start"]), float(cmd["warmup_s"]), float(cmd["duration_s"]))
            return {"count": count, "ms": ms}
        raise ValueError(f"unknown op {cmd['op']!r}")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--client-id", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    args = p.parse_args(argv)
    worker = Worker(args.client_id, args.seed, args.image_size)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            try:
                answer = worker.handle(cmd)
            except Exception as exc:  # reported to the benchmark, which fails with the reason
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
