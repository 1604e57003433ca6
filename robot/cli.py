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
from rich.text import Text

from dreamvla_client.security import is_loopback
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


# ------------------------------------------------------------------------------------------- devices

ARM_CHECK = ("that the arm is powered on and reachable from this PC, FCI is activated in Desk, and robot.arm.host "
             "and robot.arm.realtime in the launch file")
SIM_ARM_CHECK = "that franky-sim started (the sim workcell's log)"
GRIPPER_CHECK = "that the Franka Hand is attached and was initialised in Desk"
SERVER_CHECK = ("that dv-serve runs at that address (it prints READY <address>), the address (--server or "
                "server.address) and the key (--auth-key-file or server.auth_key_file)")


class DeviceUnavailable(Exception):
    """A device that is missing or failing before anything moved. Its message is one line: the device, the problem
    and what to check; every dv-* command ends with it and exit code 2, never with a traceback."""

    def __init__(self, device: str, problem: str, check: str) -> None:
        problem = " ".join(problem.split()).removeprefix(f"{device}: ")
        super().__init__(f"{device}: {problem}; check {check}")
        self.device = device


@contextlib.contextmanager
def opening(device: str, check: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn the `errors` that opening `device` raises into a `DeviceUnavailable` naming it (the cause stays
    chained for the debug log). Only the named types: a bug is not a missing device."""
    try:
        yield
    except errors as exc:
        raise DeviceUnavailable(device, str(exc) or type(exc).__name__, check) from exc


def camera_check(config: Any) -> str:
    """What to check when the camera `config` describes cannot be opened."""
    if config.type == "sim":
        return "that MuJoCo can render offscreen here (MUJOCO_GL=egl)"
    if config.type == "realsense":
        return ("that the D415 is plugged in (USB 3) and `rs-enumerate-devices` lists the serial the launch file "
                f"gives camera {config.name!r}")
    return f"camera {config.name!r} in the launch file"


def connect_cameras(cameras: dict[str, Any], stack: contextlib.ExitStack) -> None:
    """Connect every camera (each disconnected when `stack` closes); a failure names the camera."""
    from robot.cameras import CameraError

    for camera in cameras.values():
        with opening(f"camera {camera.name!r}", camera_check(camera.config), CameraError):
            camera.connect()
        stack.callback(camera.disconnect)


def open_arm(arm_cfg: Any, stack: contextlib.ExitStack, sim: bool) -> tuple[Any, Any]:
    """The connected arm and gripper (closed with `stack`); connecting moves nothing, a failure names the device."""
    import franky

    from robot.arm import Arm, Gripper, GripperConfig

    with opening(f"arm (FCI at {arm_cfg.host})", SIM_ARM_CHECK if sim else ARM_CHECK, franky.Exception):
        arm = stack.enter_context(Arm(arm_cfg))
    with opening(f"gripper (at {arm_cfg.host})", SIM_ARM_CHECK if sim else GRIPPER_CHECK, franky.Exception):
        gripper = stack.enter_context(Gripper(GripperConfig(host=arm_cfg.host)))
    return arm, gripper


def check_server(endpoint: str, contract: Any, key: bytes | None, allow_unauthenticated_remote: bool,
                 timeout_s: float) -> None:
    """Pre-flight: the server answers a `hello` with this robot's contract (and key) within `timeout_s`, before
    anything moves; the episodes' own requests then go through `RemotePolicy`."""
    from dreamvla_client.client import PolicyClient, PolicyError

    with opening(f"policy server at {endpoint}", SERVER_CHECK, PolicyError), \
            PolicyClient(endpoint, contract, client_id="dv-robot-preflight", key=key, retries=1,
                         allow_unauthenticated_remote=allow_unauthenticated_remote,
                         control_timeout_s=timeout_s) as client:
        client.hello()


def await_console(listener: Any, endpoint: str, wait_s: float) -> None:
    """Pre-flight for a required e-stop: a console must be heard within `wait_s` before anything moves. Only the
    waiting is done here; arming (ARMED -> RUN) stays the runner's start."""
    from robot.estop.listener import EStopMode

    deadline = time.monotonic() + wait_s
    while listener.check().mode is EStopMode.WAITING:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeviceUnavailable("e-stop console", f"no heartbeat on {endpoint} within {wait_s:g} s",
                                    f"that dv-estop runs with --endpoint {endpoint} (dv-launch starts it with "
                                    "estop.console: true)")
        listener.poll(min(left, 0.05))


def print_error(out: Console, exc: BaseException) -> int:
    """One line (never wrapped, never read as markup), in red; the exit code of a command that cannot run: 2."""
    out.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True)
    return 2


def announce_overrides(out: Console, overrides: list[str]) -> None:
    """Each safety override in force, in red (at the start and at the end of every run)."""
    for note in overrides:
        out.print(Text(note, style="bold red"), soft_wrap=True)


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


def _policy(args: argparse.Namespace, stack: contextlib.ExitStack, plan: RunPlan, cameras: dict[str, tuple[int, int]],
            cell: Any) -> Policy:
    cfg, safety, endpoint = plan.runner, plan.safety, plan.endpoint
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
    contract = robot_contract(cameras, cfg.rate_hz, cfg.chunk_length)
    check_server(endpoint, contract, plan.key, plan.allow_unauthenticated_remote, cfg.policy_reset_timeout_s)
    return RemotePolicy(endpoint, contract, key=plan.key, deadline_s=safety.deadline_s(cfg.chunk_length, cfg.rate_hz),
                        allow_unauthenticated_remote=plan.allow_unauthenticated_remote)


@dataclass(frozen=True)
class RunPlan:
    """What the command line and the launch file (if any) ask for, validated."""

    launch: Any  # robot.launch.LaunchConfig | None
    sim: bool
    safety: SafetyConfig
    runner: RunnerConfig
    episodes: int
    endpoint: str | None
    key: bytes | None = None  # the policy server's shared key
    allow_unauthenticated_remote: bool = False
    overrides: tuple[str, ...] = ()  # the safety overrides in force (robot.launch.config.override_notes)


def plan_run(args: argparse.Namespace) -> RunPlan:
    from robot.launch import load_launch_config
    from robot.launch.config import override_notes
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
    # Only `--policy server` talks to the server (teleop, replay and the scripted expert never do).
    served = getattr(args, "policy", None) == "server"
    endpoint = (args.server or (launch.server.address if launch else None)) if served else None
    key, allow = _server_access(args, launch, endpoint)
    notes = override_notes(launch is not None and launch.without_estop,
                           endpoint if endpoint is not None and allow and key is None and not is_loopback(endpoint)
                           else None)
    return RunPlan(launch, sim, safety, runner, args.episodes or (launch.episodes if launch else 1), endpoint, key,
                   allow, tuple(notes))


def _server_access(args: argparse.Namespace, launch: Any, endpoint: str | None) -> tuple[bytes | None, bool]:
    """(key, allow_unauthenticated_remote) from the command line, else the launch file; a server off loopback needs
    one of them (anyone on that network could otherwise read and answer the robot's requests)."""
    from robot.launch.config import read_key

    key_file = getattr(args, "auth_key_file", None)
    try:
        key = read_key(key_file) if key_file is not None else (launch.server.key() if launch else None)
    except ValueError as exc:
        raise UsageError(f"--auth-key-file: {exc}") from None
    allow = getattr(args, "allow_unauthenticated_remote", False) or (
        launch is not None and launch.server.allow_unauthenticated_remote)
    if endpoint is not None and not is_loopback(endpoint) and key is None and not allow:
        raise UsageError(f"the policy server {endpoint} is not on loopback: pass --auth-key-file FILE (its key), or "
                         "--allow-unauthenticated-remote to talk to it without one")
    return key, allow


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
    connect_cameras(cameras, stack)
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
    """The e-stop listener and status publisher a launch file asks for (none without one); a required console must
    be heard within `runner.estop_wait_s`, before anything moves."""
    launch = plan.launch
    if launch is None or not (launch.estop_required or launch.estop.console):
        return None, None
    import zmq

    from robot.estop import EStopListener, StatusPublisher

    e = launch.estop
    bound = "that no other dv-robot, dv-teleop or dv-calib uses it (estop.endpoint, estop.status_endpoint)"
    with opening(f"e-stop listener on {e.endpoint}", bound, zmq.ZMQError):
        listener = stack.enter_context(EStopListener(e.endpoint, required=launch.estop_required, timeout_s=e.timeout_s))
    with opening(f"e-stop status publisher on {e.status_endpoint}", bound, zmq.ZMQError):
        status = stack.enter_context(StatusPublisher(e.status_endpoint))
    if launch.estop_required:
        await_console(listener, e.endpoint, plan.runner.estop_wait_s)
    return listener, status


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


def _run(args: argparse.Namespace, plan: RunPlan) -> RunSummary:
    """Open every device (nothing moves until each answered), then run the episodes."""
    cfg = plan.runner
    with contextlib.ExitStack() as stack:
        cell, arm_cfg, cameras = open_devices(args, plan, stack)
        arm, gripper = open_arm(arm_cfg, stack, plan.sim)
        sizes = {name: (cam.config.height, cam.config.width) for name, cam in cameras.items()}
        policy = _policy(args, stack, plan, sizes, cell)
        estop, status = open_estop(plan, stack)
        runner = Runner(cfg, plan.safety, arm=arm, gripper=gripper, cameras=cameras, policy=policy,
                        scene=make_scene(args, cell, arm, gripper), task=args.task, policy_name=args.policy,
                        estop=estop, status=status)
        stack.callback(runner.close)  # also closes the policy
        stop_on_signals(runner)
        console.print(f"[b]{args.task}[/b]: {plan.episodes} episode(s), {args.policy} policy, {cfg.mode} mode, "
                      f"{cfg.rate_hz:g} Hz, {'sim' if plan.sim else 'real robot'}")
        summary = runner.run(plan.episodes)
    summary.overrides = list(plan.overrides)
    return summary


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
        summary = _run(args, plan)
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
