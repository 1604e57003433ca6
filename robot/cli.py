"""`dv-robot`: run a task's episodes on the sim workcell or a real arm, through the safety envelope.

    dv-robot run pick_bottle --sim --episodes 2              # sim workcell + a local dv-serve on a tiny checkpoint
    dv-robot run pick_bottle --sim --policy scripted         # the sim's scripted expert, same loop and envelope
    dv-robot run drawer_open --launch launch/real_fr3.yaml   # a real FR3 as the launch file describes it

Without `--server` or `--launch`, `--policy server` starts its own `dv-serve` subprocess on loopback, on the
checkpoint `--ckpt` (created with random weights, `dv-model init --config tiny`, when missing), and stops it at
the end. With `--launch`, the server address, cameras, limits, rates and the e-stop come from the launch file
(`dv-launch` has started the server and the console). This process never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from robot.execution import MODES
from robot.policy import Policy, RemotePolicy, ReplayPolicy, robot_contract
from robot.runner import Runner, RunnerConfig, RunSummary, episode_table, interventions_table, latency_table
from robot.safety import SafetyConfig

console = Console()
log = logging.getLogger("dv-robot")

DEFAULT_CKPT = Path("runs/robot-sim-tiny")
SERVER_READY_TIMEOUT_S = 180.0


class UsageError(Exception):
    """A command line or launch file that cannot run; the message says why."""


# ------------------------------------------------------------------------------------------- local server


@contextlib.contextmanager
def local_server(ckpt: Path, log_path: Path, ready_timeout_s: float = SERVER_READY_TIMEOUT_S) -> Iterator[str]:
    """A `dv-serve` subprocess on a free loopback port serving `ckpt` (created tiny if missing); yields its
    endpoint and terminates it on exit. Its log goes to `log_path`."""
    if not ckpt.exists():
        console.print(f"creating a tiny random-weight checkpoint at {ckpt} (dv-model init --config tiny)")
        subprocess.run([sys.executable, "-m", "policy_server.cli.model", "init", "--config", "tiny", "--out",
                        str(ckpt)], check=True, stdout=subprocess.DEVNULL)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as server_log:
        proc = subprocess.Popen([sys.executable, "-m", "policy_server.cli.serve", "--ckpt", str(ckpt),
                                 "--bind", "tcp://127.0.0.1:*"], stdout=subprocess.PIPE, stderr=server_log, text=True)
        try:
            yield _await_ready(proc, ready_timeout_s, log_path)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _await_ready(proc: subprocess.Popen[str], timeout_s: float, log_path: Path) -> str:
    """The endpoint from the server's `READY <endpoint>` line."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    console.print("starting dv-serve (loading the model) ...")
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return line.split()[1]
            if not line and proc.poll() is not None:
                break
    raise UsageError(f"dv-serve did not become ready within {timeout_s:.0f} s (exit code {proc.poll()}); "
                     f"see {log_path}")


# ------------------------------------------------------------------------------------------- assembly


def _policy(args: argparse.Namespace, stack: contextlib.ExitStack, cfg: RunnerConfig, safety: SafetyConfig,
            cameras: dict[str, tuple[int, int]], cell: Any, endpoint: str | None) -> Policy:
    if args.policy == "scripted":
        if cell is None:
            raise UsageError("--policy scripted needs the sim workcell (--sim): the expert plans from sim state")
        from robot.sim.experts import scripted_policy

        return scripted_policy(cell, cfg, safety)
    if args.policy == "replay":
        if args.replay is None:
            raise UsageError("--policy replay needs --replay FILE (a .npy of (N, 7) actions in robot units)")
        return ReplayPolicy(np.load(args.replay), cfg.rate_hz, cfg.chunk_length)
    if endpoint is None:
        endpoint = stack.enter_context(local_server(args.ckpt, Path("runs/robot/dv-serve.log")))
    key = args.auth_key_file.read_bytes().strip() if args.auth_key_file else None
    contract = robot_contract(cameras, cfg.rate_hz, cfg.chunk_length)
    return RemotePolicy(endpoint, contract, key=key, deadline_s=safety.deadline_s(cfg.chunk_length, cfg.rate_hz))


@dataclass(frozen=True)
class RunPlan:
    """What the command line and the launch file (if any) ask for, validated."""

    launch: Any  # robot.launch.LaunchConfig | None
    sim: bool
    safety: SafetyConfig
    runner: RunnerConfig
    episodes: int
    endpoint: str | None


def plan_run(args: argparse.Namespace) -> RunPlan:
    from robot.launch import load_launch_config
    from robot.sim.tasks import TASKS

    launch = load_launch_config(args.launch) if args.launch else None
    if launch is not None and launch.robot.kind == "real" and args.sim:
        raise UsageError(f"{args.launch} describes a real robot; drop --sim or use a sim launch file")
    sim = args.sim or (launch is not None and launch.robot.kind == "sim")
    if sim and args.task not in TASKS:
        raise UsageError(f"unknown sim task {args.task!r}; known: {', '.join(sorted(TASKS))}")
    if not sim and launch is None:
        raise UsageError("a real robot needs --launch FILE (robot address, camera serials, limits); or pass --sim")
    # Without a launch file (sim only): the limits of launch/sim.yaml, the one place the sim's values live (its
    # cameras render at 15 fps on the CPU, so frames may be older than a D415's before they count as stale).
    safety = launch.safety if launch else sim_safety()
    overrides = {k: v for k, v in (("mode", args.mode), ("max_episode_s", args.max_episode_s)) if v is not None}
    runner = RunnerConfig.model_validate({**(launch.runner if launch else RunnerConfig()).model_dump(), **overrides})
    return RunPlan(launch, sim, safety, runner, args.episodes or (launch.episodes if launch else 1),
                 args.server or (launch.server.address if launch else None))


def sim_safety() -> SafetyConfig:
    """The safety limits `dv-robot run --sim` uses without `--launch`: those of the shipped launch/sim.yaml."""
    from robot.launch import load_launch_config
    from robot.launch.config import DEFAULT_LAUNCH_FILE

    return load_launch_config(DEFAULT_LAUNCH_FILE).safety


def open_devices(args: argparse.Namespace, plan: RunPlan,
                 stack: contextlib.ExitStack) -> tuple[Any, Any, dict[str, Any]]:
    """(sim workcell or None, arm config, connected cameras)."""
    from robot.arm import ArmConfig

    if plan.sim:
        from robot.sim.workcell import SimWorkcell, default_cameras

        # The policy takes colour only: sim cameras skip depth unless a launch file asks for it.
        configs = list(plan.launch.cameras) if plan.launch else [c.model_copy(update={"depth": False})
                                                                 for c in default_cameras()]
        cell = stack.enter_context(SimWorkcell(task=args.task, seed=args.seed, cameras=configs))
        arm_cfg = ArmConfig(host=cell.hostname, realtime="ignore",
                            relative_dynamics_factor=plan.safety.relative_dynamics_factor)
        cameras: dict[str, Any] = dict(cell.cameras)
    else:
        from robot.cameras import make_camera

        cell, arm_cfg = None, plan.launch.robot.arm
        if arm_cfg.relative_dynamics_factor > plan.safety.relative_dynamics_factor:
            raise UsageError(f"robot.arm.relative_dynamics_factor {arm_cfg.relative_dynamics_factor} exceeds "
                             f"safety.relative_dynamics_factor {plan.safety.relative_dynamics_factor}")
        cameras = {c.name: make_camera(c) for c in plan.launch.cameras}
    for camera in cameras.values():
        camera.connect()
        stack.callback(camera.disconnect)
    return cell, arm_cfg, cameras


def make_scene(args: argparse.Namespace, cell: Any, arm: Any, gripper: Any) -> Any:
    from robot.runner import OperatorScene, SimScene

    if cell is not None:
        return SimScene(cell, arm, gripper, first_seed=args.seed)
    from robot.sim.scene import HOME_Q
    from robot.sim.tasks import TASKS

    instruction = TASKS[args.task].instruction if args.task in TASKS else args.task.replace("_", " ")
    return OperatorScene(arm, gripper, HOME_Q, instruction)


def open_estop(plan: RunPlan, stack: contextlib.ExitStack) -> tuple[Any, Any]:
    """The e-stop listener and status publisher a launch file asks for (none without one)."""
    launch = plan.launch
    if launch is None or not (launch.estop_required or launch.estop.console):
        return None, None
    from robot.estop import EStopListener, StatusPublisher

    listener = stack.enter_context(EStopListener(launch.estop.endpoint, required=launch.estop_required,
                                                 timeout_s=launch.estop.timeout_s))
    return listener, stack.enter_context(StatusPublisher(launch.estop.status_endpoint))


class Stoppable(Protocol):
    def request_stop(self, reason: str, code: str = ...) -> None: ...


def stop_on_signals(runner: Stoppable) -> None:
    """Ctrl-C, dv-launch's SIGINT/SIGTERM, or PR_SET_PDEATHSIG's SIGTERM: stop the arm and let the run finish with
    its summary, the episode recorded as aborted:interrupted. The stop goes through the runner's thread-safe hook
    on a thread of its own (the handler runs on the loop's thread, which may hold the runner's lock), never
    through an exception in the middle of a tick."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: threading.Thread(
            target=runner.request_stop, args=(signal.Signals(signum).name, "interrupted")).start())


def _run(args: argparse.Namespace) -> RunSummary:
    from robot.arm import Arm, Gripper, GripperConfig

    plan = plan_run(args)
    cfg = plan.runner
    with contextlib.ExitStack() as stack:
        cell, arm_cfg, cameras = open_devices(args, plan, stack)
        arm = stack.enter_context(Arm(arm_cfg))
        gripper = stack.enter_context(Gripper(GripperConfig(host=arm_cfg.host)))
        sizes = {name: (cam.config.height, cam.config.width) for name, cam in cameras.items()}
        policy = _policy(args, stack, cfg, plan.safety, sizes, cell, plan.endpoint)
        estop, status = open_estop(plan, stack)
        runner = Runner(cfg, plan.safety, arm=arm, gripper=gripper, cameras=cameras, policy=policy,
                        scene=make_scene(args, cell, arm, gripper), task=args.task, policy_name=args.policy,
                        estop=estop, status=status)
        stack.callback(runner.close)  # also closes the policy
        stop_on_signals(runner)
        console.print(f"[b]{args.task}[/b]: {plan.episodes} episode(s), {args.policy} policy, {cfg.mode} mode, "
                      f"{cfg.rate_hz:g} Hz, {'sim' if plan.sim else 'real robot'}")
        return runner.run(plan.episodes)


def _summary_path(args: argparse.Namespace) -> Path:
    if args.summary is not None:
        return args.summary
    return Path("runs/robot") / f"summary-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def add_log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def configure_logging(level: str) -> None:
    """Logs go to stderr through rich, so stdout keeps only the tables and summaries."""
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])


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
    run.add_argument("--auth-key-file", type=Path, help="shared key for a server that requires HMAC")
    add_log_level_option(run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from robot.launch import LaunchConfigError

    try:
        summary = _run(args)
    except (UsageError, LaunchConfigError, ValidationError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(episode_table(summary))
    console.print(interventions_table(summary))
    console.print(latency_table(summary))
    if summary.stopped:
        console.print(f"[yellow]run ended early: {summary.stopped}[/yellow]")
    path = _summary_path(args)
    summary.write_json(path)
    console.print(f"summary written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
