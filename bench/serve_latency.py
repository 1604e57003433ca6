"""`dv-bench serve`: what the wire costs, how it compares with openpi's, and what batching buys, in one run.

1. Wire overhead (tiny DreamVLA, payload 2 x 224x224x3 uint8 + 7 float32): the loopback round trip of
   `PolicyClient.infer` minus the same backend step called in this process on the same inputs. The
   server runs as a separate process (the deployment), and also in a thread of this process (labelled).
   All three are timed round-robin in one loop, so load from other programs hits them alike. Because
   that difference of two noisy distributions is coarse on a busy machine, each reply's own compute
   stages (encode + backbone + diffusion, reported by the server in `timing_ms`) are also subtracted
   from its round trip: the paired overhead. The server process is reached over tcp loopback and, as a
   robot on the server's own host would, over ipc:// (a Unix socket). Target: <= 0.5 ms at p50.
2. Transport alone: our echo server (`dv-serve --echo`, over tcp loopback and over ipc://) and
   `PolicyClient`, next to openpi's `WebsocketClientPolicy` and an echo server built the way openpi's
   server is (websockets + `openpi_client.msgpack_numpy`), same payload. Each client is its own process;
   blocks of requests alternate between them, so drift hits all alike. Target: openpi / ours >= 2x at p50
   and at p95.
3. Aggregate throughput with 1, 2, 4, 8 client processes (processes, not threads: threads would share
   one GIL and measure the benchmark's Python rather than the server), batching on and off, against the
   tiny model and an echo with a fixed per-batch delay (which shows batching's effect without CPU
   contention in the way). Batching on and off are measured back to back for each client count.

Every ratio is computed from numbers of this same run.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import openpi_env
from bench.serve_worker import CAMERAS, IMAGE_SIZE, INSTRUCTION, payload, robot_contract, timed
from dreamvla_client.client import PolicyClient
from dreamvla_client.protocol import Chunk, WireObservation
from policy_server.serving.server import Backend, PolicyServer

REPO = Path(__file__).resolve().parents[1]
OPENPI_SCRIPTS = Path(__file__).resolve().parent / "openpi"
TARGET_OVERHEAD_P50_MS = 0.5  # issue 12: the tiny model's wire overhead at p50
TARGET_TRANSPORT_RATIO = 2.0  # issue 12: openpi's echo round trip / ours, at p50 and at p95
COMPUTE_STAGES = ("encode", "backbone", "diffusion")  # the backend's own stages in a chunk's timing_ms
OFF_WARMUP_S = 0.2  # before a batching-off window: no session count to learn, only the connection to warm
START_TIMEOUT_S = 180.0  # a model server on a loaded 2-core machine can take a while to import torch

progress = Console(stderr=True)  # stdout stays clean for --json


# ------------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class Summary:
    """Round trips (or step times) of one thing, in milliseconds."""

    label: str
    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float


def summarize(label: str, ms: Sequence[float]) -> Summary:
    p50, p95 = np.percentile(ms, [50, 95])
    return Summary(label, len(ms), float(p50), float(p95), float(np.mean(ms)))


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


# ---------------------------------------------------------------------------------- processes


class Child:
    """A subprocess that talks in lines on stdout (READY lines, JSON lines), read by a thread so that every
    read can have a timeout; stderr goes to a log file that failures quote."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.log = name, log_dir / f"{name}.log"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env=env, cwd=REPO, bufsize=1)
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout_s: float) -> str:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            line = None
        if line is None:
            raise RuntimeError(f"{self.name}: no answer within {timeout_s:.0f} s (exit {self.proc.poll()}); "
                               f"log {self.log}:\n{self.log.read_text()[-3000:]}")
        return line

    def ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """The endpoint from a `READY <endpoint>` line."""
        line = self.line(timeout_s)
        if not line.startswith("READY "):
            raise RuntimeError(f"{self.name}: expected READY, got {line!r}")
        return line.split()[1]

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        answer = json.loads(self.line(timeout_s))
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    def ask(self, cmd: dict[str, Any], timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        self.send(cmd)
        return self.receive(timeout_s)

    def close(self) -> None:
        """SIGTERM (our servers drain and exit 0), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def project_env() -> dict[str, str]:
    """This repository first on PYTHONPATH, so the children run the code under test."""
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def our_server(stack: ExitStack, log_dir: Path, name: str, *args: str, threads: int | None = None,
               bind: str = "tcp://127.0.0.1:*") -> Child:
    """`dv-serve` as a process on `bind` (default: a free loopback port; quiet logs: only warnings); `threads`
    caps torch's intra-op threads there (OMP_NUM_THREADS), as `torch.set_num_threads` does here."""
    cmd = [sys.executable, "-m", "policy_server.cli.serve", "--bind", bind, "--log-level", "WARNING", *args]
    env = project_env() | ({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})
    return stack.enter_context(_closing(Child(name, cmd, log_dir, env)))


def our_workers(stack: ExitStack, log_dir: Path, count: int, prefix: str = "client") -> list[Child]:
    """`count` client processes (torch-free), each with its own payload seed."""
    return [stack.enter_context(_closing(Child(
        f"{prefix}{i}", [sys.executable, "-m", "bench.serve_worker", "--client-id", f"{prefix}{i}",
                         "--seed", str(i)], log_dir, project_env())))
            for i in range(count)]


@contextmanager
def _closing(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.close()


# ------------------------------------------------------------------------------ 1. wire overhead


def measure_wire(backend: Backend, endpoints: dict[str, str], *, iters: int, warmup: int, seed: int = 0,
                 image_size: int = IMAGE_SIZE) -> dict[str, Any]:
    """Round trips to each endpoint (servers running `backend`'s model) next to `backend.infer_batch` called
    here on the same observation, round-robin with a rotating first, after `warmup` untimed rounds.

    The in-process call is exactly what the server's worker runs per request (a one-session batch), so the
    difference is the transport: client encode, loopback, server decode/validate, the hop to the worker
    thread and back, reply encode, client decode."""
    images, state = payload(seed, image_size)
    obs = WireObservation(images=images, state=state)
    session = backend.new_session(INSTRUCTION, seed)
    clients = {label: PolicyClient(ep, robot_contract(image_size), client_id=f"wire-{i}", deadline_s=30.0,
                                   control_timeout_s=30.0)
               for i, (label, ep) in enumerate(endpoints.items())}
    try:
        for client in clients.values():
            client.reset("wire", "wire-0", INSTRUCTION, seed=seed)
        steps: dict[str, Callable[[], Any]] = {"in-process step": lambda: backend.infer_batch([session], [obs])}
        for label, client in clients.items():
            steps[label] = lambda c=client: c.infer("wire", images, state, dict.fromkeys((*CAMERAS, "state"),
                                                                                          time.monotonic_ns()))
        samples: dict[str, list[float]] = {k: [] for k in steps}
        paired: dict[str, list[float]] = {k: [] for k in clients}
        keys = list(steps)
        for round_ in range(warmup + iters):
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:
                ms, result = timed(steps[key])
                if round_ < warmup:
                    continue
                samples[key].append(ms)
                if isinstance(result, Chunk):
                    paired[key].append(ms - sum(result.timing_ms.get(s, 0.0) for s in COMPUTE_STAGES))
    finally:
        for client in clients.values():
            client.close()
    timings = [summarize(k, v) for k, v in samples.items()]
    local = timings[0]
    overhead = []
    for t in timings[1:]:
        pair = summarize(t.label, paired[t.label])
        overhead.append({"server": t.label, "p50_ms": t.p50_ms - local.p50_ms, "p95_ms": t.p95_ms - local.p95_ms,
                         "paired_p50_ms": pair.p50_ms, "paired_p95_ms": pair.p95_ms,
                         "ratio_p50": ratio(t.p50_ms, local.p50_ms), "ratio_p95": ratio(t.p95_ms, local.p95_ms),
                         "meets_target_p50": t.p50_ms - local.p50_ms <= TARGET_OVERHEAD_P50_MS})
    return {"iters": iters, "warmup": warmup, "timings": [asdict(t) for t in timings], "overhead": overhead,
            "target_p50_ms": TARGET_OVERHEAD_P50_MS}


# --------------------------------------------------------------------------- 2. transport alone


def measure_alternating(clients: dict[str, tuple[Child, dict[str, Any]]], *, iters: int, block: int,
                        warmup: int) -> dict[str, Summary]:
    """Sequential round trips from several client processes, `block` requests at a time, taking turns
    (rotating who goes first) until each has `iters`; the first `warmup` of each are discarded."""
    for child, request in clients.values():
        child.ask({**request, "n": warmup})
    samples: dict[str, list[float]] = {k: [] for k in clients}
    names = list(clients)
    turn = 0
    while any(len(v) < iters for v in samples.values()):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            child, request = clients[name]
            n = min(block, iters - len(samples[name]))
            if n > 0:
                samples[name] += child.ask({**request, "n": n})["ms"]
        turn += 1
    return {k: summarize(k, v) for k, v in samples.items()}


OPENPI_LABEL = "openpi: websockets + msgpack_numpy"


def measure_transport(ours: dict[str, tuple[Child, str]], openpi: Child | None, *, iters: int, block: int = 100,
                      warmup: int = 20, openpi_note: str = "") -> dict[str, Any]:
    """Echo round trips over each of our endpoints (label -> (client process, endpoint): tcp loopback, ipc)
    and (when available) openpi's, each client in its own process, the same payload; with openpi, the
    ratio openpi / ours at p50 and p95 for each of ours, against the issue's 2x."""
    clients = {label: (worker, {"op": "latency", "endpoint": endpoint}) for label, (worker, endpoint) in ours.items()}
    if openpi is not None:
        clients[OPENPI_LABEL] = (openpi, {"op": "latency"})
    summaries = measure_alternating(clients, iters=iters, block=block, warmup=warmup)
    result: dict[str, Any] = {"iters": iters, "block": block, "warmup": warmup,
                              "timings": [asdict(s) for s in summaries.values()], "openpi": openpi_note,
                              "target_ratio": TARGET_TRANSPORT_RATIO}
    if openpi is not None:
        result["ratios"] = transport_ratios(summaries[OPENPI_LABEL], [summaries[label] for label in ours])
    return result


def transport_ratios(theirs: Summary, ours: Sequence[Summary]) -> list[dict[str, Any]]:
    """openpi / ours at p50 and p95 for each of ours, and whether both reach TARGET_TRANSPORT_RATIO."""
    rows = []
    for mine in ours:
        p50, p95 = ratio(theirs.p50_ms, mine.p50_ms), ratio(theirs.p95_ms, mine.p95_ms)
        rows.append({"ours": mine.label, "p50": p50, "p95": p95,
                     "meets_target": all(r is not None and r >= TARGET_TRANSPORT_RATIO for r in (p50, p95))})
    return rows


def start_openpi(stack: ExitStack, log_dir: Path, venv: Path | None) -> tuple[Child | None, str]:
    """openpi's echo server and client loop in the separate venv; (None, reason) when it cannot be had."""
    try:
        python = openpi_env.ensure(venv)
    except (RuntimeError, OSError) as exc:
        return None, f"skipped: {exc}"
    env = openpi_env.clean_env()
    server = stack.enter_context(_closing(Child(
        "openpi-server", [str(python), str(OPENPI_SCRIPTS / "echo_server.py")], log_dir, env)))
    uri = server.ready()
    client = stack.enter_context(_closing(Child(
        "openpi-client", [str(python), str(OPENPI_SCRIPTS / "echo_client.py"), "--uri", uri], log_dir, env)))
    hello = client.receive()
    versions = ", ".join(f"{k} {v}" for k, v in hello["versions"].items())
    return client, f"separate venv {python.parent.parent} ({versions})"


# ------------------------------------------------------------------------------ 3. throughput


def server_counters(endpoint: str) -> dict[str, int]:
    """The server's counters (a `stats` request needs no hello)."""
    with PolicyClient(endpoint, robot_contract(), client_id="bench-stats", control_timeout_s=30.0) as client:
        return client.stats().counters


def measure_window(workers: Sequence[Child], endpoint: str, *, duration_s: float, warmup_s: float,
                   lead_s: float = 0.3) -> dict[str, Any]:
    """All `workers` sending back to back to `endpoint` over the same window; requests per second counts the
    replies that arrived inside it. The mean batch is read from the server's own counters over the window
    (its replies, less the one stats reply, per batch it ran)."""
    start = time.monotonic() + lead_s + warmup_s
    for w in workers:
        w.send({"op": "window", "endpoint": endpoint, "start": start, "warmup_s": warmup_s, "duration_s": duration_s})
    time.sleep(max(0.0, start - time.monotonic()))
    before = server_counters(endpoint)
    time.sleep(max(0.0, start + duration_s - time.monotonic()))
    after = server_counters(endpoint)
    answers = [w.receive(duration_s + warmup_s + 60) for w in workers]
    count = sum(a["count"] for a in answers)
    batches = after.get("batches", 0) - before.get("batches", 0)
    replies = after.get("replies", 0) - before.get("replies", 0) - 1
    return {"requests": count, "rps": count / duration_s, "mean_batch": replies / batches if batches else None,
            "ms": [ms for a in answers for ms in a["ms"]]}


def combine(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from repeated windows: the median rate (a window in which another program stalled a client
    drags a mean, not a median), the spread, and the p50 round trip over every request of every window."""
    rates = [w["rps"] for w in windows]
    batches = [w["mean_batch"] for w in windows if w["mean_batch"] is not None]
    ms = [x for w in windows for x in w["ms"]]
    return {"rps": float(np.median(rates)), "rps_min": min(rates), "rps_max": max(rates), "windows": len(windows),
            "requests": sum(w["requests"] for w in windows),
            "mean_batch": float(np.median(batches)) if batches else None,
            "p50_ms": float(np.percentile(ms, 50)) if ms else None}


def measure_throughput(servers: dict[str, dict[str, str]], workers: Sequence[Child], *, client_counts: Sequence[int],
                       duration_s: float, warmup_s: float, repeats: int = 1,
                       settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """For each server (name -> {"on": endpoint, "off": endpoint}) and client count: `repeats` rounds of one
    window with batching on and one with it off, back to back (alternating which goes first), so that load
    from other programs hits both alike; then the on/off ratio of the median requests per second.
    Only batching-on windows need the full `warmup_s` (the server must see every session as active before it
    waits for them); with batching off a short warm-up of the connection will do.
    `settings` (the servers' batching options) is recorded with the numbers."""
    if max(client_counts) > len(workers):
        raise ValueError(f"{max(client_counts)} clients asked for, {len(workers)} worker processes")
    for endpoints in servers.values():
        for endpoint in endpoints.values():
            for w in workers:
                w.send({"op": "connect", "endpoint": endpoint})
            for w in workers:
                w.receive()
    rows = []
    for name, endpoints in servers.items():
        for n in client_counts:
            progress.log(f"throughput: {name}, {n} client(s), batching on and off, {repeats} round(s)")
            windows: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
            for round_ in range(repeats):
                for mode in ("on", "off") if (round_ + n) % 2 == 0 else ("off", "on"):
                    windows[mode].append(measure_window(workers[:n], endpoints[mode], duration_s=duration_s,
                                                        warmup_s=warmup_s if mode == "on" else OFF_WARMUP_S))
            on, off = combine(windows["on"]), combine(windows["off"])
            rows.append({"server": name, "clients": n, "on": on, "off": off,
                         "ratio_on_off": ratio(on["rps"], off["rps"])})
    return {"duration_s": duration_s, "warmup_s": warmup_s, "warmup_off_s": OFF_WARMUP_S, "repeats": repeats,
            "clients": "processes", "settings": settings or {}, "rows": rows}


# ------------------------------------------------------------------------------------- the run


def tiny_checkpoint(out: Path) -> Path:
    """A fresh tiny checkpoint (random weights: latency depends on shapes, not values), made silently."""
    import torch

    from policy_server.model.checkpoint import save_checkpoint
    from policy_server.model.config import preset
    from policy_server.model.dreamvla import DreamVLA
    from policy_server.model.text import build_tokenizer

    cfg = preset("tiny")
    torch.manual_seed(0)
    model = DreamVLA(cfg, with_decoders=True, load_pretrained=True)
    save_checkpoint(model, out, source="init:tiny:seed0 (dv-bench serve)", tokenizer=build_tokenizer(cfg.text, None))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-able result that `render` prints."""
    import torch

    from policy_server.serving.backend import EngineBackend
    from policy_server.serving.engine import PolicyEngine

    began, load_start = time.perf_counter(), os.getloadavg()
    if args.device == "cuda" and not torch.cuda.is_available():  # before minutes of server start-up
        raise ValueError("--device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    clients = sorted({int(c) for c in args.clients.split(",")})
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dv-bench-serve-")))
        log_dir = Path(args.log_dir) if args.log_dir else tmp
        log_dir.mkdir(parents=True, exist_ok=True)
        ckpt = Path(args.ckpt) if args.ckpt else tiny_checkpoint(tmp / "tiny")
        progress.log(f"checkpoint {ckpt}; starting servers and {max(clients)} client processes")
        batching = ("--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms))
        model = ("--ckpt", str(ckpt), "--device", args.device, *batching)
        delay = ("--echo", "--echo-delay-ms", str(args.echo_delay_ms), *batching)
        ipc = f"ipc://{tmp}/%s.ipc"  # same host: a Unix socket instead of the TCP stack
        servers = {"model-on": our_server(stack, log_dir, "model-on", *model, threads=args.threads),
                   "model-ipc": our_server(stack, log_dir, "model-ipc", *model, threads=args.threads,
                                           bind=ipc % "model"),
                   "model-off": our_server(stack, log_dir, "model-off", *model, "--no-batching", threads=args.threads),
                   "echo": our_server(stack, log_dir, "echo", "--echo"),
                   "echo-ipc": our_server(stack, log_dir, "echo-ipc", "--echo", bind=ipc % "echo"),
                   "delay-on": our_server(stack, log_dir, "delay-on", *delay),
                   "delay-off": our_server(stack, log_dir, "delay-off", *delay, "--no-batching")}
        workers = our_workers(stack, log_dir, max(clients))
        openpi, openpi_note = (None, "skipped (--no-openpi)") if args.no_openpi else start_openpi(
            stack, log_dir, Path(args.openpi_venv) if args.openpi_venv else None)
        endpoints = {name: server.ready() for name, server in servers.items()}  # they started in parallel
        for worker in workers:
            worker.receive()  # {"ready": true}
        engine = PolicyEngine.from_checkpoint(ckpt, device=args.device)
        backend = EngineBackend(engine)
        # The labelled in-process variant: the same engine served by a thread of this process.
        thread_server = PolicyServer(backend, "tcp://127.0.0.1:*", max_batch=args.max_batch,
                                     max_wait_ms=args.max_wait_ms)
        thread = threading.Thread(target=thread_server.serve_forever, daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(thread_server.stop)

        progress.log("transport: our echo vs openpi's")
        transport = measure_transport({"ours: ZeroMQ tcp loopback": (workers[0], endpoints["echo"]),
                                       "ours: ZeroMQ ipc": (workers[0], endpoints["echo-ipc"])},
                                      openpi, iters=args.transport_iters, openpi_note=openpi_note)
        progress.log(f"wire overhead: {engine.cfg.name} model, {args.iters} rounds")
        wire = measure_wire(backend, {"server process, tcp": endpoints["model-on"],
                                      "server process, ipc": endpoints["model-ipc"],
                                      "server thread (this process), tcp": thread_server.endpoint},
                            iters=args.iters, warmup=args.warmup)
        wire["model"] = f"{engine.cfg.name} ({ckpt}), {engine.precision} on {engine.device}"
        throughput = measure_throughput(
            {engine.cfg.name: {"on": endpoints["model-on"], "off": endpoints["model-off"]},
             f"echo+{args.echo_delay_ms:g}ms": {"on": endpoints["delay-on"], "off": endpoints["delay-off"]}},
            workers, client_counts=clients, duration_s=args.duration_s, warmup_s=args.warmup_s, repeats=args.repeats,
            settings={"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms})
        torch_threads = torch.get_num_threads()
    return {
        "payload": {"cameras": list(CAMERAS), "image": [IMAGE_SIZE, IMAGE_SIZE, 3], "image_dtype": "uint8",
                    "state": 7, "state_dtype": "float32", "bytes": 2 * IMAGE_SIZE * IMAGE_SIZE * 3 + 7 * 4},
        "machine": {"cpus": os.cpu_count(), "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
                    "python": sys.version.split()[0], "torch_threads": torch_threads},
        "wire": wire, "transport": transport, "throughput": throughput,
        "elapsed_s": time.perf_counter() - began,
    }


# -------------------------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _rate(cell: dict[str, Any]) -> str:
    return f"{cell['rps']:.1f} ({cell['rps_min']:.0f}-{cell['rps_max']:.0f})"


def _timings_table(title: str, timings: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("", "n", "p50 ms", "p95 ms", "mean ms"):
        table.add_column(col, justify="left" if not col else "right")
    for t in timings:
        table.add_row(t["label"], str(t["n"]), _ms(t["p50_ms"]), _ms(t["p95_ms"]), _ms(t["mean_ms"]))
    return table


def _overhead_table(wire: dict[str, Any]) -> Table:
    table = Table(title=f"Wire overhead in ms (target: <= {wire['target_p50_ms']:g} ms at p50)")
    for col in ("server", "RT-local p50", "RT-local p95", "paired p50", "paired p95", "RT/local", "target"):
        table.add_column(col, justify="left" if col == "server" else "right")
    for o in wire["overhead"]:
        table.add_row(o["server"], _ms(o["p50_ms"]), _ms(o["p95_ms"]), _ms(o["paired_p50_ms"]),
                      _ms(o["paired_p95_ms"]), _x(o["ratio_p50"]), "met" if o["meets_target_p50"] else "NOT met")
    return table


def _throughput_table(throughput: dict[str, Any]) -> Table:
    settings = throughput["settings"]
    batching = (f", max batch {settings['max_batch']}, max wait {settings['max_wait_ms']:g} ms"
                if {"max_batch", "max_wait_ms"} <= set(settings) else "")
    table = Table(title=f"3. Aggregate throughput in req/s (median of {throughput['repeats']} x "
                        f"{throughput['duration_s']:g} s windows, min-max), client {throughput['clients']}{batching}")
    for col in ("server", "clients", "batching on", "batching off", "on/off", "mean batch on", "p50 ms on",
                "p50 ms off"):
        table.add_column(col, justify="left" if col == "server" else "right")
    for r in throughput["rows"]:
        mean_batch = r["on"]["mean_batch"]
        table.add_row(r["server"], str(r["clients"]), _rate(r["on"]), _rate(r["off"]),
                      _x(r["ratio_on_off"]), "-" if mean_batch is None else f"{mean_batch:.2f}",
                      _ms(r["on"]["p50_ms"]), _ms(r["off"]["p50_ms"]))
    return table


def render(result: dict[str, Any], console: Console | None = None) -> None:
    """The result as rich tables, with the conditions needed to read them."""
    console = console or Console()
    m, p = result["machine"], result["payload"]
    console.print(f"[b]dv-bench serve[/b]: {m['cpus']} CPUs, load average {m['loadavg_start'][0]:.2f} at start, "
                  f"{m['loadavg_end'][0]:.2f} at end (1-min); Python {m['python']}, torch threads "
                  f"{m['torch_threads']}; {result['elapsed_s']:.0f} s in all")
    console.print(f"payload: {len(p['cameras'])} x {'x'.join(map(str, p['image']))} {p['image_dtype']} + state "
                  f"{p['state']} {p['state_dtype']} ({p['bytes']:,} bytes of arrays)")
    wire = result["wire"]
    console.print(_timings_table(f"1. {escape(wire['model'])}: step in this process vs loopback round trip "
                                 f"({wire['iters']} rounds, round-robin)", wire["timings"]))
    console.print(_overhead_table(wire))
    console.print("RT-local: round-trip percentile minus in-process percentile. paired: each reply's round trip "
                  "minus its own server-side compute stages (encode+backbone+diffusion). RT/local: p50 ratio.")
    transport = result["transport"]
    console.print(_timings_table(f"2. Transport alone, echo policy ({transport['iters']} round trips each, "
                                 f"alternating blocks of {transport['block']})", transport["timings"]))
    if "ratios" in transport:
        target = transport["target_ratio"]
        for row in transport["ratios"]:
            console.print(f"openpi / {escape(row['ours'])}: p50 {_x(row['p50'])}, p95 {_x(row['p95'])} "
                          f"(target >= {target:g}x at both: {'met' if row['meets_target'] else 'NOT met'})")
        console.print(f"openpi side: {escape(transport['openpi'])}")
    else:
        console.print(f"openpi side {escape(transport['openpi'])}")
    console.print(_throughput_table(result["throughput"]))


# ---------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `dv-bench serve` (for a subparser of dv-bench, or this module's own parser)."""
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")
    p.add_argument("--ckpt", help="checkpoint to serve (default: a fresh tiny one in a temporary directory)")
    p.add_argument("--device", default="cpu", help="device of the model, in this process and in the server")
    p.add_argument("--threads", type=int, help="torch threads, here and in the model servers (default: torch's)")
    p.add_argument("--iters", type=int, default=200, help="timed rounds of the wire-overhead comparison")
    p.add_argument("--warmup", type=int, default=10, help="untimed rounds before them")
    p.add_argument("--transport-iters", type=int, default=2000, help="echo round trips per transport")
    p.add_argument("--clients", default="1,2,4,8", help="client counts of the throughput table")
    p.add_argument("--duration-s", type=float, default=1.5, help="measured window of a throughput cell")
    p.add_argument("--repeats", type=int, default=3, help="windows per throughput cell (the median is reported)")
    p.add_argument("--warmup-s", type=float, default=1.2,
                   help="sending before each batching-on window (> 1 s, the server's active-session refresh)")
    p.add_argument("--echo-delay-ms", type=float, default=20.0, help="per-batch delay of the throughput echo")
    p.add_argument("--max-batch", type=int, default=8, help="the servers' largest batch (dv-serve default)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="the servers' batching wait (dv-serve default)")
    p.add_argument("--no-openpi", action="store_true", help="skip openpi's side (no venv made)")
    p.add_argument("--openpi-venv", help="venv for openpi-client (default: $DV_OPENPI_VENV or ~/.cache/dreamvla/"
                                         "openpi-bench-venv; made on first use)")
    p.add_argument("--log-dir", help="keep the servers' and clients' logs here (default: a temporary directory)")


def command(args: argparse.Namespace) -> int:
    """Run and print (JSON with --json, else tables); what `dv-bench serve` calls."""
    if min(args.iters, args.transport_iters, args.repeats) < 1 or args.duration_s <= 0 or args.warmup < 0:
        raise ValueError("--iters, --transport-iters and --repeats must be >= 1, --duration-s > 0, --warmup >= 0")
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dv-bench serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return command(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        progress.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
