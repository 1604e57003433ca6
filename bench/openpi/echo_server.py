"""An echo policy served the way openpi serves a policy, for `dv-bench serve`'s transport comparison.

Runs inside the separate openpi venv (see `bench/openpi_env.py`), never in the project's
environment. Written for this benchmark from openpi's documented server behaviour (its
`WebsocketPolicyServer`), not copied from it:
  - a `websockets` asyncio server, per-message compression off, no message size limit;
  - on connect the server sends the policy's metadata, packed with `openpi_client.msgpack_numpy`;
  - then, per message: unpack the observation, call `policy.infer(obs)`, add `server_timing`
    ({"infer_ms", and "prev_total_ms" from the second request on}), pack and send the result;
  - an exception is sent back as a text frame (the client raises on text) and the connection closed.
The policy is the same echo as `policy_server.serving.echo.EchoBackend`: chunk row k = (k + 1) * state.

Prints `READY ws://127.0.0.1:PORT` once listening (port 0 picks a free one).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import traceback

import numpy as np
import websockets
import websockets.asyncio.server
import websockets.frames
from openpi_client import msgpack_numpy

CHUNK_LENGTH = 3
ACTION_DIM = 7


class EchoPolicy:
    """openpi's policy interface (`infer(obs) -> dict`) around the echo."""

    metadata = {"policy": "echo", "chunk_length": CHUNK_LENGTH, "action_dim": ACTION_DIM}

    def __init__(self) -> None:
        self._rows = np.arange(1, CHUNK_LENGTH + 1, dtype=np.float32)[:, None]

    def infer(self, obs: dict) -> dict:
        state = np.asarray(obs["observation/state"], dtype=np.float32)[:ACTION_DIM]
        return {"actions": self._rows * state}


async def handler(websocket: websockets.asyncio.server.ServerConnection, policy: EchoPolicy) -> None:
    packer = msgpack_numpy.Packer()
    await websocket.send(packer.pack(policy.metadata))
    prev_total_s = None
    while True:
        try:
            began = time.monotonic()
            obs = msgpack_numpy.unpackb(await websocket.recv())
            infer_began = time.monotonic()
            action = policy.infer(obs)
            timing = {"infer_ms": (time.monotonic() - infer_began) * 1e3}
            if prev_total_s is not None:
                timing["prev_total_ms"] = prev_total_s * 1e3
            action["server_timing"] = timing
            await websocket.send(packer.pack(action))
            prev_total_s = time.monotonic() - began
        except websockets.ConnectionClosed:
            break
        except Exception:
            await websocket.send(traceback.format_exc())
            await websocket.close(code=websockets.frames.CloseCode.INTERNAL_ERROR, reason="internal server error")
            raise


async def serve(host: str, port: int) -> None:
    policy = EchoPolicy()
    async with websockets.asyncio.server.serve(lambda ws: handler(ws, policy), host, port,
                                               compression=None, max_size=None) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"READY ws://{host}:{bound}", flush=True)
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
