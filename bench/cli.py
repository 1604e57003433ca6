"""`dv-bench`: latency benchmarks of the policy server on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from bench import recorder as record_bench
from bench import robot as robot_bench
from bench import sampler_latency, serve_latency
from bench import train as train_bench
from policy_server.cli.common import run_subcommand

if TYPE_CHECKING:
    from bench.model_latency import BenchResult

console = Console()


def _timings_table(result: BenchResult) -> Table:
    table = Table(title=f"DreamVLA {result.config}: per-step latency, window of {result.sequence_length} frames")
    for col in ("variant", "precision", "p50 [ms]", "p95 [ms]", "mean [ms]"):
        table.add_column(col, justify="left" if col in ("variant", "precision") else "right")
    for t in result.timings:
        table.add_row(t.variant, t.precision, f"{t.p50_ms:.1f}", f"{t.p95_ms:.1f}", f"{t.mean_ms:.1f}")
    return table


def _ratios_table(result: BenchResult) -> Table:
    table = Table(title="p50 ratios (same run)")
    for col in ("numerator", "denominator", "ratio"):
        table.add_column(col, justify="right" if col == "ratio" else "left")
    for r in result.ratios:
        table.add_row(r.numerator, r.denominator, f"{r.p50_ratio:.2f}x")
    return table


def _cmd_model(args: argparse.Namespace) -> int:
    """Time the serving-step variants of one named config (random weights)."""
    import torch

    from bench.model_latency import run_model_bench
    from policy_server.model.config import preset

    if args.iters < 1 or args.warmup < 0:
        raise ValueError("--iters must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run_model_bench(preset(args.config), iters=args.iters, warmup=args.warmup, device=args.device,
                             seed=args.seed, variants=args.variants.split(","),
                             precisions=args.precisions.split(","))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    console.print(f"[b]{result.config}[/b] on {result.device}, {result.threads} threads, {result.iters} timed steps "
                  f"per variant after {result.warmup} warmup, interleaved; random weights (latency does not depend "
                  f"on weight values); backbone tokens: {result.full_tokens} full window, {result.serving_tokens} "
                  f"pruned; inputs: uint8 480x640x3 per camera + 7-D state; "
                  f"tokenizer: {result.tokenizer_note}")
    console.print(_timings_table(result))
    console.print(_ratios_table(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dv-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model", help="per-step model latency: recompute vs cached, decoders, fp32 vs bf16")
    p.add_argument("--config", default="tiny", help="named model config (tiny, paper-real, paper-calvin)")
    p.add_argument("--iters", type=int, default=100, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds before timing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="recompute,cached,cached-full-seq,cached+decoders,cached+flex",
                   help="comma list of step variants to time (paper configs on CPU: fewer is faster)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list: fp32, bf16")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser("sampler", help="the diffusion sampler alone: diffusers' scheduler loop, planned, CUDA graph")
    sampler_latency.add_arguments(p)
    p.set_defaults(func=sampler_latency.command)

    p = sub.add_parser("serve", help="wire overhead, transport vs openpi's, throughput with batching on/off")
    serve_latency.add_arguments(p)
    p.set_defaults(func=serve_latency.command)

    p = sub.add_parser("robot", help="control loop in the sim workcell: tick jitter, latency, e-stop, velocity jumps")
    robot_bench.add_arguments(p)
    p.set_defaults(func=robot_bench.command)

    p = sub.add_parser("record", help="cost of writing one recorded tick per video codec, against the tick budget")
    record_bench.add_arguments(p)
    p.set_defaults(func=record_bench.command)

    p = sub.add_parser("train", help="dv-train throughput: steps/s, samples/s, data share, peak RSS, vs today's loop")
    train_bench.add_arguments(p)
    p.set_defaults(func=train_bench.command)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_subcommand(build_parser(), argv, console)


if __name__ == "__main__":
    sys.exit(main())
