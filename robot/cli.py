"""`dv-robot`: run a task's episodes on the sim workcell or a real arm, through the safety envelope.

    dv-robot run pick_bottle --sim --episodes 2              # sim workcell + a local dv-serve on a tiny checkpoint
    dv-robot run pick_bottle --sim --policy scripted         # the sim's scripted expert, same loop and envelope
    dv-robot run drawer_open --launch launch/real_fr3.yaml   # a real FR3 as the launch file describes it

Without `--server` or `--launch`, `--policy server` starts its own `dv-serve` subprocess on loopback, on the
checkpoint `--ckpt` (created with random weights, `dv-model init --config tiny`, when missing), and stops it at
the end. With `--launch`, the server address, cameras, limits, rates and the e-stop come from the launch file
(`dv-launch` has started the server and the console). This process never imports torch.

Every device is opened, and the policy server and a required e-stop console are heard from, before anything
moves; a missing or failing one ends the command with one line naming it and what to check, and exit code 2.
A safety override in force (a real robot without e-stop, an unauthenticated remote server) is printed in red
at the start and the end of the run and recorded in the summary JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from rich.console import Console

from dreamvla_client.security import is_loopback
from robot.cli_support import (
    add_log_level_option,
    announce_overrides,
    configure_logging,
    print_error,
    stop_on_signals,
)
from robot.errors import DeviceUnavailable, UsageError
from robot.execution import MODES
from robot.policy import Policy, RemotePolicy, ReplayPolicy, robot_contract
from robot.runner import RunSummary, episode_table, interventions_table, latency_table
from robot.server_access import DEFAULT_CKPT, check_server, local_server, server_access
from robot.workcell import Workcell, WorkcellPlan, open_workcell, plan_workcell

console = Console()
log = logging.getLogger("dv-robot")


@dataclass(frozen=True)
class RunPlan:
    """What `dv-robot run` asks for, validated: the workcell, the policy, and how to reach the policy server."""

    workcell: WorkcellPlan
    policy: str  # server | scripted | replay
    replay: Path | None = None  # with --policy replay: a .npy of (N, 7) actions in robot units
    ckpt: Path = DEFAULT_CKPT  # the checkpoint of a locally started dv-serve
    endpoint: str | None = None  # None with --policy server: start a local dv-serve
    key: bytes | None = None  # the policy server's shared key
    allow_unauthenticated_remote: bool = False
    overrides: tuple[str, ...] = ()  # the safety overrides in force (robot.launch.config.override_notes)


def plan_run(args: argparse.Namespace) -> RunPlan:
    """The command line, validated into a plan (nothing opened yet)."""
    from robot.launch.config import override_notes

    cell = plan_workcell(args.task, sim=args.sim, launch=args.launch, seed=args.seed, episodes=args.episodes,
                         mode=args.mode, max_episode_s=args.max_episode_s)
    launch = cell.launch
    # Only `--policy server` talks to the server (replay and the scripted expert never do).
    endpoint = (args.server or (launch.server.address if launch else None)) if args.policy == "server" else None
    key, allow = server_access(args.auth_key_file, launch, endpoint, args.allow_unauthenticated_remote)
    unauthenticated = endpoint if endpoint is not None and allow and key is None and not is_loopback(endpoint) else None
    return RunPlan(cell, args.policy, args.replay, args.ckpt, endpoint, key, allow,
                   (*cell.overrides, *override_notes(False, unauthenticated)))


def _policy(plan: RunPlan, cell: Workcell, stack: contextlib.ExitStack) -> Policy:
    """The loop's policy; for the server, a pre-flight `hello` (a local dv-serve started first when none is named)."""
    cfg, safety = plan.workcell.runner, plan.workcell.safety
    if plan.policy == "scripted":
        if cell.sim is None:
            raise UsageError("--policy scripted needs the sim workcell (--sim): the expert plans from sim state")
        from robot.sim.experts import scripted_policy

        return scripted_policy(cell.sim, cfg, safety)
    if plan.policy == "replay":
        if plan.replay is None:
            raise UsageError("--policy replay needs --replay FILE (a .npy of (N, 7) actions in robot units)")
        return ReplayPolicy(np.load(plan.replay), cfg.rate_hz, cfg.chunk_length)
    endpoint = plan.endpoint
    if endpoint is None:
        endpoint = stack.enter_context(local_server(plan.ckpt, Path("runs/robot/dv-serve.log")))
    contract = robot_contract(cell.camera_sizes(), cfg.rate_hz, cfg.chunk_length)
    check_server(endpoint, contract, plan.key, plan.allow_unauthenticated_remote, cfg.policy_reset_timeout_s)
    return RemotePolicy(endpoint, contract, key=plan.key, deadline_s=safety.deadline_s(cfg.chunk_length, cfg.rate_hz),
                        allow_unauthenticated_remote=plan.allow_unauthenticated_remote)


def _run(plan: RunPlan) -> RunSummary:
    """Open every device, hear from the policy server and a required e-stop console (nothing moves until each
    answered), then run the episodes."""
    w = plan.workcell
    with contextlib.ExitStack() as stack:
        cell = open_workcell(w, stack)
        policy = _policy(plan, cell, stack)
        cell.await_estop_console()
        runner = cell.runner(policy, plan.policy)
        stack.callback(runner.close)  # also closes the policy
        stop_on_signals(runner)
        console.print(f"[b]{w.task}[/b]: {w.episodes} episode(s), {plan.policy} policy, {w.runner.mode} mode, "
                      f"{w.runner.rate_hz:g} Hz, {'sim' if w.sim else 'real robot'}")
        summary = runner.run(w.episodes)
    summary.overrides = list(plan.overrides)
    return summary


def _summary_path(args: argparse.Namespace) -> Path:
    if args.summary is not None:
        return args.summary
    return Path("runs/robot") / f"summary-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dv-robot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run episodes of one task")
    run.add_argument("task", help="task name, e.g. pick_bottle")
    run.add_argument("--sim", action="store_true", help="the embedded sim workcell (franky-sim + MuJoCo)")
    run.add_argument("--server", help="dv-serve endpoint, e.g. tcp://127.0.0.1:5555 (default: start one)")
    run.add_argument("--episodes", type=int, help="episodes to run (default: the launch file's, else 1)")
    run.add_argument("--policy", choices=["server", "scripted", "replay"], default="server")
    run.add_argument("--replay", type=Path, help="with --policy replay: a .npy of (N, 7) actions in robot units")
    run.add_argument("--mode", choices=MODES, help="chunk execution mode (default: the launch file's, else chunk)")
    run.add_argument("--launch", type=Path, help="launch YAML (robot, cameras, safety, runner, server, e-stop)")
    run.add_argument("--summary", type=Path, help="JSON summary path (default: runs/robot/summary-TASK-TIME.json)")
    run.add_argument("--seed", type=int, default=0, help="sim layout seed of the first episode (then +1 each)")
    run.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="checkpoint for a locally started dv-serve")
    run.add_argument("--max-episode-s", type=float, help="episode time limit in seconds")
    run.add_argument("--auth-key-file", type=Path, help="the policy server's shared key: a file whose bytes, stripped "
                     "of surrounding whitespace, are the key (default: the launch file's server.auth_key_file)")
    run.add_argument("--allow-unauthenticated-remote", action="store_true",
                     help="override: talk to a policy server off loopback without a key (printed in red, recorded)")
    add_log_level_option(run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from robot.launch import LaunchConfigError

    try:
        plan = plan_run(args)
    except (UsageError, LaunchConfigError, ValidationError) as exc:
        return print_error(console, exc)
    announce_overrides(console, list(plan.overrides))
    try:
        summary = _run(plan)
    except (UsageError, DeviceUnavailable, ValidationError) as exc:
        return print_error(console, exc)
    else:
        console.print(episode_table(summary))
        console.print(interventions_table(summary))
        console.print(latency_table(summary))
        if summary.stopped:
            console.print(f"[yellow]run ended early: {summary.stopped}[/yellow]")
        path = _summary_path(args)
        summary.write_json(path)
        console.print(f"summary written to {path}")
        return 0
    finally:
        announce_overrides(console, list(plan.overrides))


if __name__ == "__main__":
    sys.exit(main())
