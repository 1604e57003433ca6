"""openpi's client (`openpi_client.WebsocketClientPolicy`) in a timing loop, for `dv-bench serve`.

Runs inside the separate openpi venv. Speaks the same JSON-lines protocol on stdin/stdout as
`bench.serve_worker` (op "latency" only), so the benchmark drives both clients alike.
The observation is openpi's usual layout with the benchmark's payload: two (size, size, 3) uint8
images, a 7-D float32 state and the prompt (openpi clients send the prompt with every observation).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

PROMPT = "pick up the bottle"


def observation(seed: int, size: int) -> dict:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)]
    return {"observation/image": images[0], "observation/wrist_image": images[1],
            "observation/state": rng.normal(size=7).astype(np.float32), "prompt": PROMPT}


def time_calls(call, n: int) -> list[float]:
    """Milliseconds of wall clock (perf_counter) per call: the same loop as the project's worker."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uri", required=True, help="ws://host:port of the echo server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args()
    policy = WebsocketClientPolicy(args.uri)
    obs = observation(args.seed, args.image_size)
    reply = policy.infer(obs)  # check the echo once: a transport that garbles arrays must not be timed
    expected = np.arange(1, 4, dtype=np.float32)[:, None] * obs["observation/state"]
    if not np.array_equal(reply["actions"], expected):
        print(json.dumps({"error": "echo mismatch"}), flush=True)
        return 1
    versions = {name: importlib.metadata.version(name) for name in ("openpi-client", "websockets", "msgpack", "numpy")}
    print(json.dumps({"ready": True, "metadata": policy.get_server_metadata(), "versions": versions}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] != "latency":
            print(json.dumps({"error": f"unsupported op {cmd['op']!r}"}), flush=True)
            continue
        print(json.dumps({"ms": time_calls(lambda: policy.infer(obs), int(cmd["n"]))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
