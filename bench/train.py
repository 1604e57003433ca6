"""`dv-bench train`: training throughput of a config on this machine, through dv-train's own data path.

For the model with its knowledge decoders and action-only, it times one optimiser step (load + forward +
backward + update) of:
  today      the model code as it was before dv-train (its depth loss gathered the measured pixels by boolean
             indexing), driven as a plain loop would drive it: torch's default CPU threads, per-tensor AdamW
  dv-train   what `dv-train` runs: fused AdamW, the same threads (and once more with 1 thread when that differs)
  compiled   dv-train under torch.compile (with --compile; the compile time is printed separately)
interleaved round by round on the same machine, so ratios come from one run. Batches come from a synthetic
memory-mapped cache through `WindowReader`, the loader's collate and `to_train_batch`, synchronously, so the
data share is the loader's whole cost. Peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import numpy as np
from rich.console import Console
from rich.table import Table


def synthetic_cache(cfg, root: Path, episodes: int = 16, length: int = 40, seed: int = 0):
    """Random frames, depth, tracks and actions as memory-mapped .npy files under root (as a real cache reads)."""
    from policy_server.training.data import ArrayCache

    rng = np.random.default_rng(seed)
    frames, r, p = episodes * length, cfg.vision.image_size, (2 * cfg.vision.grid) ** 2

    def memmap(name: str, array: np.ndarray) -> np.ndarray:
        np.save(root / f"{name}.npy", array)
        return np.load(root / f"{name}.npy", mmap_mode="r")

    per_cam = lambda kind, make: {c: memmap(f"{kind}.{c}", make()) for c in cfg.cameras}  # noqa: E731
    return ArrayCache(
        cameras=list(cfg.cameras), instructions=["pick up the bottle"] * episodes,
        episodes=[(e * length, length) for e in range(episodes)],
        images=per_cam("images", lambda: rng.integers(0, 256, (frames, r, r, 3), dtype=np.uint8)),
        depth=per_cam("depth", lambda: rng.uniform(0.3, 1.5, (frames, r, r)).astype(np.float16)),
        tracks=per_cam("tracks", lambda: rng.normal(size=(frames, p, 2)).astype(np.float16)),
        state=memmap("state", rng.normal(size=(frames, 7)).astype(np.float32)),
        action=memmap("action", (rng.uniform(-0.02, 0.02, (frames, 7))).astype(np.float32)),
        seeds=[None] * episodes,
    )


@dataclass
class Timing:
    variant: str
    decoders: bool
    threads: int
    step_s: float  # median
    data_s: float  # median
    steps_per_s: float
    samples_per_s: float
    data_share: float


def gathered_depth_loss(pred, target, cfg):
    """The model's SiLog depth loss before dv-train, for the `today` variant: it gathered the measured pixels
    (nonzero + index); the model now zeroes the holes instead, equal up to float rounding."""
    import torch

    from policy_server.model.knowledge import depth_loss

    valid = (target > 0) & torch.isfinite(target)
    if cfg.depth_loss != "silog" or not valid.any():
        return depth_loss(pred, target, cfg)
    g = torch.log(target[valid] + 1e-6) - torch.log(pred[valid] + 1e-6)
    return torch.sqrt((g**2).mean() - cfg.silog_lambda * g.mean() ** 2)


class Variant:
    """One model + optimiser, stepped on demand."""

    def __init__(self, name: str, cfg, decoders: bool, threads: int, fused: bool, compile_: bool, seed: int) -> None:
        import torch

        from policy_server.model.dreamvla import DreamVLA

        self.name, self.decoders, self.threads = name, decoders, threads
        torch.manual_seed(seed)
        self.model = DreamVLA(cfg, with_decoders=decoders, load_pretrained=False).train()
        self.net = torch.compile(self.model) if compile_ else self.model
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4,
                                     weight_decay=1e-4, fused=fused)
        self.steps: list[tuple[float, float]] = []
        self.compile_s = 0.0

    def step(self, next_batch, record: bool) -> None:
        import torch

        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        batch = next_batch(self.decoders)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        today = mock.patch("policy_server.model.dreamvla.depth_loss", gathered_depth_loss)
        with today if self.name == "today" else contextlib.nullcontext():
            self.net(batch)["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
        self.opt.step()
        t2 = time.perf_counter()
        if record:
            self.steps.append((t2 - t0, t1 - t0))

    def timing(self, batch: int) -> Timing:
        step = statistics.median(s for s, _ in self.steps)
        data = statistics.median(d for _, d in self.steps)
        return Timing(self.name, self.decoders, self.threads, step, data, 1 / step, batch / step, data / step)


@contextlib.contextmanager
def batch_source(cfg, batch: int, seed: int = 0) -> Iterator[Callable[[bool], object]]:
    """next_batch(decoders) -> a TrainBatch of random windows of a synthetic memory-mapped cache, read through
    dv-train's WindowReader (with augmentation), collate and to_train_batch."""
    import torch

    from policy_server.model.checkpoint import default_normalization
    from policy_server.model.text import build_tokenizer
    from policy_server.training.data import WindowReader, build_index
    from policy_server.training.loader import collate, to_train_batch

    with tempfile.TemporaryDirectory(prefix="dv-bench-train-") as tmp:
        cache = synthetic_cache(cfg, Path(tmp))
        index = build_index([cache], {(0, e) for e in range(len(cache.episodes))}, cfg.sequence_length)
        text = [build_tokenizer(cfg.text, None)(cache.instructions).numpy()]
        norm = default_normalization(cfg)
        readers = {d: WindowReader([cache], index, cfg, text, norm, augment=True, depth=d, tracks=d, future_images=d)
                   for d in (True, False)}
        rng = np.random.default_rng(seed)

        def next_batch(decoders: bool):
            items = rng.integers(0, len(index), batch)
            raw = collate([readers[decoders].read(int(i), (seed, int(i))) for i in items])
            return to_train_batch(raw, cfg, torch.device("cpu"))

        yield next_batch


def run_train_bench(config: str, batch: int, iters: int, warmup: int, threads: int | None, compile_: bool,
                    seed: int = 0) -> dict:
    import torch

    from policy_server.model.config import preset

    cfg = preset(config)
    default_threads = torch.get_num_threads()
    threads = threads or default_threads
    with batch_source(cfg, batch, seed) as next_batch:
        variants = []
        for decoders in (True, False):
            for n in sorted({default_threads, threads, 1}, reverse=True):
                variants.append(Variant("today", cfg, decoders, n, False, False, seed))
                variants.append(Variant("dv-train", cfg, decoders, n, True, False, seed))
            if compile_:
                v = Variant("compiled", cfg, decoders, threads, True, True, seed)
                t = time.perf_counter()
                v.step(next_batch, record=False)
                v.compile_s = time.perf_counter() - t
                variants.append(v)
        for r in range(warmup + iters):
            for v in variants:
                v.step(next_batch, record=r >= warmup)
        timings = [v.timing(batch) for v in variants]
    today = {(t.decoders, t.threads): t.step_s for t in timings if t.variant == "today"}
    best = {d: min(t.step_s for t in timings if t.variant != "today" and t.decoders == d) for d in (True, False)}
    return {
        "config": config, "batch": batch, "iters": iters, "warmup": warmup, "default_threads": default_threads,
        "timings": [asdict(t) for t in timings],
        # same threads: what the code changes buy; best: dv-train's fastest setting against today's defaults
        "speedup_vs_today": [{"variant": t.variant, "decoders": t.decoders, "threads": t.threads,
                              "ratio": today[(t.decoders, t.threads)] / t.step_s}
                             for t in timings if t.variant != "today"],
        "best_vs_today_defaults": {f"decoders={d}": today[(d, default_threads)] / best[d] for d in (True, False)},
        "compile_s": {f"decoders={v.decoders}": v.compile_s for v in variants if v.name == "compiled"},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def profile_step(config: str, batch: int, threads: int | None, steps: int = 3) -> str:
    """torch.profiler's top operators over a few dv-train steps with decoders (where the time goes)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from policy_server.model.config import preset

    cfg = preset(config)
    if threads:
        torch.set_num_threads(threads)
    with batch_source(cfg, batch) as next_batch:
        v = Variant("dv-train", cfg, True, torch.get_num_threads(), True, False, 0)
        v.step(next_batch, record=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                v.step(next_batch, record=False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="named model config (tiny; paper-* need their weights)")
    parser.add_argument("--batch", type=int, default=8, help="windows per step")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, help="dv-train's CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile on CPU)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")


def command(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        raise ValueError("--batch and --iters must be >= 1 and --warmup >= 0")
    console = Console(width=max(Console().width, 110))  # the table's nine columns need it even in a pipe
    result = run_train_bench(args.config, args.batch, args.iters, args.warmup, args.threads, args.compile)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"dv-train steps, {result['config']} on CPU, batch {result['batch']}, median of "
                        f"{result['iters']} interleaved steps (load + forward + backward + AdamW); "
                        "'vs today': today's step time at the same threads / this one")
    for col in ("variant", "heads", "thr", "step ms", "steps/s", "samples/s", "data ms", "data %", "vs today"):
        table.add_column(col, justify="left" if col in ("variant", "heads") else "right", no_wrap=True)
    ratios = {(r["variant"], r["decoders"], r["threads"]): r["ratio"] for r in result["speedup_vs_today"]}
    for t in result["timings"]:
        ratio = ratios.get((t["variant"], t["decoders"], t["threads"]))
        table.add_row(t["variant"], "decoders" if t["decoders"] else "action", str(t["threads"]),
                      f"{t['step_s'] * 1e3:.0f}", f"{t['steps_per_s']:.2f}", f"{t['samples_per_s']:.1f}",
                      f"{t['data_s'] * 1e3:.1f}", f"{t['data_share']:.1%}", f"{ratio:.2f}x" if ratio else "1.00x")
    console.print(table)
    for k, r in result["best_vs_today_defaults"].items():
        console.print(f"fastest dv-train setting vs today's code at torch's default threads, {k}: {r:.2f}x")
    for k, s in result["compile_s"].items():
        console.print(f"torch.compile, {k}: first step {s:.0f} s")
    console.print(f"peak RSS {result['peak_rss_mib']:.0f} MiB; torch's default threads here: "
                  f"{result['default_threads']}")
    if args.profile:
        print(profile_step(args.config, args.batch, args.threads))  # wide: not through rich
    return 0
