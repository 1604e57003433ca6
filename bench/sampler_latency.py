"""`dv-bench sampler`: the action head's 10-step DDIM+CFG sampler alone, the released loop against ours, one run.

Variants, each on the same head, condition and noise:
  scheduler  the released loop: diffusers' `DDIMScheduler.step` at every step (`ActionHead.sample_reference`)
  planned    `ActionHead.denoise`: one DiT forward per step, condition tokens and DDIM coefficients made once
  graphed    (CUDA only) the planned loop replayed from a CUDA graph (`serving/sampler_graph.py`)
in fp32 and under bf16 autocast, the engine's two precisions. Timed round-robin with `dv-bench model`'s loop,
so the ratios compare like with like. Weights are random: latency depends on shapes, not values.
torch is imported where it is used, so `dv-bench` itself starts without it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import torch

    from bench.model_latency import Ratio, Timing
    from policy_server.serving.engine import Precision

SCHEDULER, PLANNED, GRAPHED = "scheduler", "planned", "graphed"

console = Console()


@dataclass(frozen=True)
class SamplerBench:
    config: str
    device: str
    threads: int
    batch: int
    iters: int
    warmup: int
    timings: list[Timing]
    ratios: list[Ratio]


def sampler_steps(name: str, batch: int, device: torch.device, seed: int
                  ) -> dict[tuple[str, Precision], Callable[[], object]]:
    """One zero-argument sampler call per (variant, precision), all on the same head and inputs."""
    import torch

    from bench.model_latency import PRECISIONS
    from policy_server.model.action_head import ActionHead
    from policy_server.model.config import preset
    from policy_server.serving.sampler_graph import GraphedSampler

    cfg = preset(name)
    torch.manual_seed(seed)
    head = ActionHead(cfg.backbone.hidden, cfg.action.chunk, cfg.action.dim, cfg.action_head).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, cfg.action.chunk, cfg.backbone.hidden, generator=g).to(device)
    noise = torch.randn(batch, cfg.action.chunk, cfg.action.dim, generator=g).to(device)
    variants: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        SCHEDULER: head.sample_reference, PLANNED: head.denoise}
    if device.type == "cuda":
        variants[GRAPHED] = GraphedSampler(head)

    def call(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], precision: Precision) -> Callable[[], object]:
        def step() -> object:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                        enabled=precision == "bf16"):
                return run(cond, noise)
        return step

    return {(v, p): call(run, p) for v, run in variants.items() for p in PRECISIONS}


def run_sampler_bench(name: str, *, batch: int, iters: int, warmup: int, device: str, seed: int) -> SamplerBench:
    import torch

    from bench.model_latency import PRECISIONS, Ratio, summarize, time_interleaved

    dev = torch.device(device)
    timings = summarize(time_interleaved(sampler_steps(name, batch, dev, seed), iters, warmup, dev))
    p50 = {t.label: t.p50_ms for t in timings}
    ratios = [Ratio(f"{SCHEDULER} {p}", f"{v} {p}", p50[f"{SCHEDULER} {p}"] / p50[f"{v} {p}"])
              for v in (PLANNED, GRAPHED) for p in PRECISIONS if f"{v} {p}" in p50]
    return SamplerBench(name, str(dev), torch.get_num_threads(), batch, iters, warmup, timings, ratios)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="named model config whose action head is timed")
    p.add_argument("--batch", type=int, default=1, help="episodes per sampler call (the DiT sees twice as many)")
    p.add_argument("--iters", type=int, default=50, help="timed calls per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing (graphs capture here)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")


def command(args: argparse.Namespace) -> int:
    if args.iters < 1 or args.warmup < 1 or args.batch < 1:
        raise ValueError("--iters, --warmup and --batch must be >= 1 (a graph is captured in the first round)")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result = run_sampler_bench(args.config, batch=args.batch, iters=args.iters, warmup=args.warmup,
                               device=args.device, seed=args.seed)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return 0
    console.print(f"[b]{result.config}[/b] action head on {result.device}, {result.threads} threads, batch "
                  f"{result.batch}: {result.iters} timed calls per variant after {result.warmup} warmup, "
                  f"interleaved; random weights")
    table = Table(title="DDIM+CFG sampler latency (10 steps)")
    for col in ("variant", "precision", "p50 [ms]", "p95 [ms]", "mean [ms]"):
        table.add_column(col, justify="left" if col in ("variant", "precision") else "right")
    for t in result.timings:
        table.add_row(t.variant, t.precision, f"{t.p50_ms:.2f}", f"{t.p95_ms:.2f}", f"{t.mean_ms:.2f}")
    console.print(table)
    for r in result.ratios:
        console.print(f"p50 {r.numerator} / {r.denominator}: {r.p50_ratio:.2f}x")
    return 0
