"""`dv-serve`: serve a DreamVLA checkpoint (or, with --echo, a torch-free echo policy) over protocol v1.

Prints exactly one line to stdout, `READY <endpoint>`, once the model is loaded, warmed up and the
socket bound; logs go to stderr. SIGTERM/SIGINT: new requests get `shutting_down`, in-flight ones
are answered, then the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.logging import RichHandler

from dreamvla_client.protocol import WireObservation
from dreamvla_client.security import check_bind_policy, read_key_file
from policy_server.serving.echo import EchoBackend, echo_contract
from policy_server.serving.server import Backend, PolicyServer

console = Console(stderr=True)


def _engine_backend(args: argparse.Namespace) -> Backend:
    import torch

    from policy_server.serving.backend import EngineBackend
    from policy_server.serving.engine import PolicyEngine

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    engine = PolicyEngine.from_checkpoint(args.ckpt, device=device, precision=args.dtype,
                                          sampler_graphs=False if args.no_sampler_graphs else None)
    logging.getLogger(__name__).info("loaded %s (%s) on %s in %s", args.ckpt, engine.cfg.name, engine.device,
                                     engine.precision)
    return EngineBackend(engine)


def warm_up(backend: Backend, steps: int) -> None:
    """A few dummy steps before READY, so that the first robot does not pay for lazy initialisation."""
    contract = backend.contract()
    size = contract.image_size
    obs = WireObservation(images={c: np.zeros((size, size, 3), np.uint8) for c in contract.cameras},
                      state=np.zeros(len(contract.state_layout), np.float32))
    session = backend.new_session("warm up", 0)
    for _ in range(steps):
        backend.infer_batch([session], [obs])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dv-serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, help="checkpoint directory (required unless --echo)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="ZeroMQ endpoint; port * picks a free one; non-loopback needs --auth-key-file")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--max-batch", type=int, default=8, help="most sessions per inference batch")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="longest a request waits for batch mates")
    p.add_argument("--no-batching", action="store_true", help="run requests one at a time")
    p.add_argument("--session-ttl-s", type=float, default=600.0, help="an idle session is dropped after this")
    p.add_argument("--max-sessions", type=int, default=64, help="least recently used sessions beyond are dropped")
    p.add_argument("--auth-key-file", type=Path,
                   help="shared key file (>= 16 bytes once surrounding whitespace is stripped): every connection "
                        "is CURVE-encrypted and only clients holding the same key get in")
    p.add_argument("--echo", action="store_true", help="serve an echo policy (no model, no torch)")
    p.add_argument("--echo-delay-ms", type=float, default=0.0, help="with --echo: simulated time per batch")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--no-sampler-graphs", action="store_true",
                   help="on CUDA, run the diffusion sampler eagerly instead of replaying a CUDA graph")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ckpt is None and not args.echo:
        parser.error("--ckpt is required (or --echo)")
    logging.basicConfig(level=args.log_level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False)])
    try:
        key = read_key_file(args.auth_key_file) if args.auth_key_file else None
        check_bind_policy(args.bind, key)  # before minutes of model loading, not after
        backend = EchoBackend(echo_contract(), delay_s=args.echo_delay_ms / 1e3) if args.echo else _engine_backend(args)
        warm_up(backend, args.warmup_steps)
        server = PolicyServer(backend, args.bind, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                              session_ttl_s=args.session_ttl_s, max_sessions=args.max_sessions, key=key,
                              batching=not args.no_batching)
    except (ValueError, OSError, KeyError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: server.stop())
    print(f"READY {server.endpoint}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
