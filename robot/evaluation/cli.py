"""`dv-eval`: a checkpoint's closed-loop success rate in the sim workcell, through the path a user's robot takes.

    dv-eval runs/tiny/checkpoints/step_0002000 --task pick_bottle --seeds 5000-5019
    dv-eval CKPT --task pick_bottle drawer_open --seeds 5000-5019 --out runs/eval/tiny

`dv-serve` runs the checkpoint in a subprocess (this process never imports torch), and each task's episodes run
through the `Runner` with its safety envelope, franky and franky-sim, as `dv-robot` runs them. Per task it
reports the success rate with its Wilson 95% interval, the steps and seconds to success, the interventions by
rule, one mp4 of the static camera per episode, and a JSON summary. Evaluation seeds never overlap the seeds the
training demos were recorded on: those come from the checkpoint's `trained_on.json` (written by `dv-train`) and
from any `--data` dataset, and an overlap is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from robot.cli_support import add_log_level_option, configure_logging, print_error, stop_on_signals
from robot.errors import DeviceUnavailable, UsageError
from robot.evaluation.episode_video import EpisodeVideo
from robot.evaluation.seeds import (
    EVAL_SEED_START,
    SeedOverlap,
    check_no_overlap,
    dataset_seeds,
    parse_seed_range,
)
from robot.evaluation.wilson import wilson_interval
from robot.execution import MODES
from robot.policy import RemotePolicy, robot_contract
from robot.runner import RunSummary
from robot.server_access import check_server, local_server
from robot.workcell import WorkcellPlan, open_workcell, plan_workcell

console = Console()
TRAINED_ON = "trained_on.json"  # written next to config.json by dv-train: the datasets and their seeds
DEFAULT_LAUNCH = Path("sim_train")  # the packaged launch file the sim demos are recorded with (same cameras)


def training_seeds(ckpt: Path, data: list[Path]) -> tuple[set[int], str]:
    """Every seed a training demo of `ckpt` was recorded on (its trained_on.json and `data`), and their source."""
    seeds: set[int] = set()
    sources = []
    record = ckpt / TRAINED_ON
    if record.is_file():
        for entry in json.loads(record.read_text())["datasets"]:
            seeds.update(int(s) for s in entry["seeds"] if s is not None)
        sources.append(str(record))
    for dataset in data:
        seeds |= dataset_seeds(dataset)
        sources.append(str(dataset))
    return seeds, ", ".join(sources) or "no record"


def plan_task(args: argparse.Namespace, task: str, seeds: range) -> WorkcellPlan:
    plan = plan_workcell(task, launch=args.launch, seed=seeds.start, episodes=len(seeds), mode=args.mode,
                         max_episode_s=args.max_episode_s)
    if not plan.sim:
        raise UsageError(f"{args.launch} describes a real robot: dv-eval scores the sim workcell (on a real robot, "
                         "`dv-robot run` asks the operator to judge each episode)")
    return plan


def run_task(plan: WorkcellPlan, endpoint: str, out: Path, video: bool) -> RunSummary:
    """One task's episodes on a fresh sim workcell, each with its video."""
    with contextlib.ExitStack() as stack:
        cell = open_workcell(plan, stack)
        cfg = plan.runner
        contract = robot_contract(cell.camera_sizes(), cfg.rate_hz, cfg.chunk_length)
        check_server(endpoint, contract, None, False, cfg.policy_reset_timeout_s)
        policy = RemotePolicy(endpoint, contract, deadline_s=plan.safety.deadline_s(cfg.chunk_length, cfg.rate_hz))
        steps = EpisodeVideo(out / "videos", "static", round(cfg.rate_hz), plan.task) if video else None
        runner = cell.runner(policy, "server", steps=steps)
        stack.callback(runner.close)  # also closes the policy
        stop_on_signals(runner)
        console.print(f"[b]{plan.task}[/b]: seeds {plan.seed}-{plan.seed + plan.episodes - 1}")
        return runner.run(plan.episodes)


def task_row(summary: RunSummary) -> dict[str, Any]:
    """The numbers of one task: rate and interval, steps and seconds to success, interventions by rule."""
    totals = summary.totals()
    n, k = totals["episodes"], totals["successes"]
    low, high = wilson_interval(k, n) if n else (0.0, 0.0)
    won = [e for e in summary.episodes if e.success]
    return {"task": summary.task, "episodes": n, "successes": k, "success_rate": k / n if n else 0.0,
            "wilson95": [low, high], "aborted": totals["aborted"],
            "mean_steps_to_success": sum(e.steps for e in won) / len(won) if won else None,
            "mean_seconds_to_success": sum(e.duration_s for e in won) / len(won) if won else None,
            "interventions": totals["interventions"]}


def overall_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n, k = sum(r["episodes"] for r in rows), sum(r["successes"] for r in rows)
    low, high = wilson_interval(k, n) if n else (0.0, 0.0)
    interventions: Counter[str] = Counter()
    for r in rows:
        interventions.update(r["interventions"])
    return {"task": "all", "episodes": n, "successes": k, "success_rate": k / n if n else 0.0,
            "wilson95": [low, high], "task_mean_rate": sum(r["success_rate"] for r in rows) / len(rows),
            "aborted": sum(r["aborted"] for r in rows), "interventions": dict(sorted(interventions.items()))}


def results_table(rows: list[dict[str, Any]], overall: dict[str, Any]) -> Table:
    table = Table(title="closed-loop evaluation (Wilson 95% interval)")
    for col in ("task", "success", "rate", "95% interval", "steps to success", "s to success", "aborted",
                "interventions"):
        table.add_column(col)
    for r in [*rows, overall]:
        lo, hi = r["wilson95"]
        steps, secs = r.get("mean_steps_to_success"), r.get("mean_seconds_to_success")
        table.add_row(r["task"], f"{r['successes']}/{r['episodes']}", f"{100 * r['success_rate']:.0f}%",
                      f"{100 * lo:.0f}-{100 * hi:.0f}%", "-" if steps is None else f"{steps:.0f}",
                      "-" if secs is None else f"{secs:.1f}", str(r["aborted"]), str(sum(r["interventions"].values())))
    return table


def interventions_table(rows: list[dict[str, Any]]) -> Table:
    """Interventions by rule (columns: tasks): what the envelope had to correct, and where."""
    table = Table(title="interventions by rule")
    table.add_column("rule")
    for r in rows:
        table.add_column(r["task"], justify="right")
    rules = sorted({k for r in rows for k in r["interventions"]})
    for rule in rules:
        table.add_row(rule, *(str(r["interventions"].get(rule, 0)) for r in rows))
    return table


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Plan every task (refusing bad input before anything starts), serve the checkpoint, run the tasks."""
    if not (args.ckpt / "config.json").is_file():
        raise UsageError(f"{args.ckpt}: not a checkpoint (no config.json)")
    seeds = parse_seed_range(args.seeds)
    if args.episodes is not None:
        seeds = range(seeds.start, seeds.start + args.episodes)
    trained, source = training_seeds(args.ckpt, args.data)
    check_no_overlap(seeds, trained, source)
    if source == "no record" and seeds.start < EVAL_SEED_START:
        console.print(f"[yellow]no record of the training seeds ({args.ckpt / TRAINED_ON} is missing, no --data): "
                      f"the overlap check cannot run; seeds from {EVAL_SEED_START} up are never used for demos")
    plans = [plan_task(args, task, seeds) for task in args.task]
    out = args.out or Path("runs/eval") / f"{args.ckpt.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summaries: list[RunSummary] = []
    with local_server(args.ckpt, out / "dv-serve.log") as endpoint:
        for plan in plans:
            summaries.append(run_task(plan, endpoint, out, not args.no_video))
            if summaries[-1].stopped:
                break
    rows = [task_row(s) for s in summaries]
    result = {"checkpoint": str(args.ckpt), "seeds": [seeds.start, seeds.stop - 1], "training_seeds_from": source,
              "tasks": rows, "overall": overall_row(rows), "stopped": next((s.stopped for s in summaries
                                                                            if s.stopped), ""),
              "runs": [s.to_json() for s in summaries]}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "summary.json")
    result["out"] = str(out)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dv-eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path, help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("--task", nargs="+", required=True, help="one or more sim tasks, e.g. pick_bottle")
    parser.add_argument("--seeds", default=f"{EVAL_SEED_START}-{EVAL_SEED_START + 19}",
                        help=f"sim layout seeds A-B, inclusive (default {EVAL_SEED_START}-{EVAL_SEED_START + 19})")
    parser.add_argument("--episodes", type=int, help="episodes per task (default: one per seed)")
    parser.add_argument("--data", type=Path, nargs="*", default=[],
                        help="training datasets whose seeds must not be evaluated on (besides trained_on.json)")
    parser.add_argument("--launch", type=Path, default=DEFAULT_LAUNCH,
                        help="sim launch file (default: sim_train, the cameras the demos were recorded with)")
    parser.add_argument("--mode", choices=MODES, help="chunk execution mode (default: the launch file's)")
    parser.add_argument("--max-episode-s", type=float, help="episode time limit in seconds")
    parser.add_argument("--out", type=Path, help="output directory (default runs/eval/CKPT-TIME)")
    parser.add_argument("--no-video", action="store_true", help="skip the per-episode mp4s")
    add_log_level_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from robot.launch import LaunchConfigError

    try:
        result = evaluate(args)
    except (UsageError, DeviceUnavailable, LaunchConfigError, ValidationError, SeedOverlap, ValueError,
            FileNotFoundError) as exc:
        return print_error(console, exc)
    console.print(results_table(result["tasks"], result["overall"]))
    if any(r["interventions"] for r in result["tasks"]):
        console.print(interventions_table(result["tasks"]))
    if result["stopped"]:
        console.print(f"[yellow]evaluation ended early: {result['stopped']}[/yellow]")
    console.print(f"summary and videos in {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
