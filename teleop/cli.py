"""`dv-teleop`: record demonstrations into a LeRobot v3 dataset, and replay them through the robot runtime.

    dv-teleop record --task drawer_open --sim --device scripted --episodes 5 --keep success
    dv-teleop record --task pick_bottle --launch launch/real_fr3.yaml --device spacemouse
    dv-teleop replay runs/datasets/drawer_open --episode 0 --sim

Recording runs the same `Runner` as `dv-robot`: the device is the loop's policy (the sim's scripted expert, or a
SpaceMouse/keyboard whose velocity commands become actions), so every command passes the same e-stop, timeline
and safety envelope, and the recorded actions are exactly what the loop executed. Hand-guiding has its own
passive loop (`teleop.guiding`) that never commands the arm; in the sim a scripted "hand" moves it. Without
`--launch`, `--sim` uses launch/sim.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from calibration.record import numbers_hash
from robot.cli_support import (
    add_log_level_option,
    announce_overrides,
    configure_logging,
    print_error,
    stop_on_signals,
)
from robot.errors import DeviceUnavailable, UsageError
from robot.policy import Policy
from robot.runner import EpisodeRecord, Runner, RunnerConfig
from robot.workcell import Workcell, WorkcellPlan, open_workcell, plan_workcell
from teleop.answers import Answers, KeyAnswers, LineAnswers
from teleop.dataset import DatasetWriter, EpisodeAborted, ResumeMismatch
from teleop.dataset import layout as L
from teleop.devices.command import CommandSource
from teleop.guiding import EStopRefused
from teleop.recorder import EpisodeProgress, Recorder
from teleop.replay import ReplayError
from teleop.rows import dataset_config

console = Console()

DEVICES = ("scripted", "keyboard", "spacemouse", "guiding")
GUIDING_HELP = "move the arm by hand (guiding buttons) · space gripper · enter end episode · y/n keep"
KEEP_RULES = ("ask", "success", "all")
HUMAN_EPISODE_S = 300.0  # a person needs longer than a policy's 30 s default
# The scripted device demonstrates slower than `dv-robot --policy scripted` (0.15 m/s): at 0.15 m/s the drawer
# pull outran the arm at the bring-up dynamics (0.1) and the envelope clamped the lead to 50 mm on 11-24 ticks
# of an episode, so the recorded actions were the envelope's, not the expert's; at 0.08 m/s the largest lead was
# 38.5 mm, no rule fired, and a replay commands exactly the recorded targets.
DEMO_SPEED_MPS = 0.08
SESSIONS_DIR = "meta/dv_sessions"


# ------------------------------------------------------------------------------------------- decisions


def make_decide(rule: str, answers: Answers | None, stopped: Callable[[], bool],
                ask_panel: Callable[[], contextlib.AbstractContextManager[None]]) -> Callable[..., bool]:
    """keep/discard: an interrupted or aborted episode is never kept by a rule; `ask` shows the outcome (in sim
    the success predicate) and waits for the operator's y/n."""

    def decide(record: EpisodeRecord, progress: EpisodeProgress) -> bool:
        if record.outcome == "aborted:interrupted" or stopped():
            return False
        if rule == "success":
            return record.success
        if rule == "all":
            return not record.outcome.startswith("aborted:")
        assert answers is not None
        with ask_panel():
            console.print(f"episode {record.index}: [b]{record.outcome}[/b] (success: {record.success}), "
                          f"{progress.written} steps, {progress.dropped} dropped"
                          f"{' - DEGRADED' if progress.degraded else ''}")
            console.print("keep it? \\[y/n] ", end="")
            answer = answers.ask(stopped)
        return answer == "y"

    return decide


# ------------------------------------------------------------------------------------------- the dataset


# Pre-flight free space (docs/safety.md D3: at least two episodes): bytes per pixel per tick, generous
# for a real D415 (a sim recording measured 0.16 for depth PNGs and 0.01 for h264 video).
DEPTH_BYTES_PER_PIXEL, VIDEO_BYTES_PER_PIXEL = 0.6, 0.1


def episode_bytes(cameras: dict[str, Any], fps: int, max_episode_s: float) -> int:
    """A generous size of the longest episode allowed, for the pre-flight free-space check."""
    per_tick = sum(c.config.width * c.config.height * (VIDEO_BYTES_PER_PIXEL + DEPTH_BYTES_PER_PIXEL * c.config.depth)
                   for c in cameras.values())
    return int(per_tick * fps * max_episode_s)


def open_dataset(root: Path, cameras: dict[str, Any], fps: int, launch: Any, video_codec: str,
                 max_episode_s: float) -> DatasetWriter:
    """Create or resume `root`; a resume with other cameras, robot or rate is refused, naming the difference.
    The calibration is not part of that identity: a rig is recalibrated every hour or so (DROID's rule, `dv-calib
    check`), and each session file records the calibration its episodes were recorded with. An episode only
    starts with room for two of the longest allowed."""
    robot_config = {"robot": launch.robot.model_dump(mode="json"),
                    "cameras": [c.model_dump(mode="json") for c in launch.cameras]}
    sizes = {name: (cam.config.height, cam.config.width, cam.config.depth) for name, cam in cameras.items()}
    cfg = dataset_config(sizes, fps, robot_config, video_codec)
    return DatasetWriter(root, cfg, min_free_bytes=2 * episode_bytes(cameras, fps, max_episode_s))


def write_session(root: Path, session: dict[str, Any]) -> Path:
    """The launch config, calibration and device of this recording session, and the episodes it kept (rewritten
    atomically after each commit; the dataset itself never depends on this file)."""
    path = root / SESSIONS_DIR / f"{session['started'].replace(':', '')}-{session['id']}.json"
    L.atomic_write_json(path, session)
    return path


# ------------------------------------------------------------------------------------------- assembly


def _device(device: str, cell: Workcell, runner_cfg: RunnerConfig) -> tuple[Policy | CommandSource, Answers, str]:
    """The device (a loop policy, or for guiding the command source of the passive loop), where the operator's
    y/n comes from, and the panel's key help."""
    from teleop.devices.command import TeleopPolicy

    safety = cell.plan.safety
    if device == "scripted":
        if cell.sim is None:
            raise UsageError("--device scripted needs the sim workcell (--sim): the expert plans from sim state")
        from robot.sim.experts import scripted_policy

        return (scripted_policy(cell.sim, runner_cfg, safety, max_speed=DEMO_SPEED_MPS), LineAnswers(),
                "scripted expert · Ctrl-C ends the session")
    if device == "guiding" and cell.sim is not None:
        from teleop.devices.sim_hand import SimHand

        return (SimHand(cell.sim, cell.arm, runner_cfg.rate_hz, safety), LineAnswers(),
                "sim: a scripted hand guides the arm · Ctrl-C ends the session")
    if device in ("keyboard", "guiding"):
        from robot.estop.keys import RawKeys
        from teleop.devices.keyboard import HELP, KeyboardSource

        if not sys.stdin.isatty():
            raise UsageError(f"--device {device} needs a terminal on stdin (its keys)")
        source = KeyboardSource(RawKeys(sys.stdin.fileno()))
        if device == "guiding":
            return source, KeyAnswers(source.answers), GUIDING_HELP
        return TeleopPolicy(source, runner_cfg.rate_hz, runner_cfg.chunk_length), KeyAnswers(source.answers), HELP
    from teleop.devices.spacemouse import SpaceMouseSource, SpaceMouseUnavailable

    try:
        source = SpaceMouseSource()
    except SpaceMouseUnavailable as exc:
        raise UsageError(str(exc)) from exc
    return (TeleopPolicy(source, runner_cfg.rate_hz, runner_cfg.chunk_length), LineAnswers(),
            "left button: gripper · right button: end episode · Ctrl-C ends the session")


def _plan(args: argparse.Namespace) -> WorkcellPlan:
    """The workcell this recording runs on: the loop at the recording rate, in chunk mode for the scripted expert
    and receding mode for a person (an operator's command is fresh every tick), who also gets longer episodes."""
    from robot.launch.config import DEFAULT_LAUNCH_FILE

    return plan_workcell(args.task, sim=args.sim, launch=args.launch or (DEFAULT_LAUNCH_FILE if args.sim else None),
                         seed=args.seed, episodes=args.episodes,
                         mode="chunk" if args.device == "scripted" else "receding",
                         max_episode_s=args.max_episode_s or (None if args.device == "scripted" else HUMAN_EPISODE_S),
                         rate_hz=args.fps)


def _record(args: argparse.Namespace, plan: WorkcellPlan) -> list[EpisodeProgress]:
    from teleop.guiding import GuidedRecording
    from teleop.panel import RecordingPanel

    runner_cfg = plan.runner
    root = args.root or Path("runs/datasets") / args.task
    assert plan.launch is not None  # a recording always has a launch file (launch/sim.yaml with --sim)
    with contextlib.ExitStack() as stack:
        cell = open_workcell(plan, stack)
        writer = stack.enter_context(open_dataset(root, cell.cameras, args.fps, plan.launch, args.video_codec,
                                                  runner_cfg.max_episode_s))
        device, answers, help_text = _device(args.device, cell, runner_cfg)
        cell.await_estop_console()
        session = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "id": uuid.uuid4().hex[:8],
                   "argv": sys.argv[1:],
                   "device": args.device, "task": args.task, "launch_file": str(plan.launch_file),
                   "launch": plan.launch.model_dump(mode="json"),
                   "calibration": plan.launch.calibration.model_dump(mode="json"),
                   "calibration_hash": numbers_hash(plan.launch.calibration.model_dump(mode="json")),
                   "overrides": list(plan.overrides), "episodes": {}}
        driver: list[Runner | GuidedRecording] = []  # who moves (or watches) the arm; set below
        stopped = lambda: bool(driver) and driver[0].stop_reason is not None  # noqa: E731
        panel: RecordingPanel | None = None
        decide = make_decide(args.keep, answers, stopped,
                             lambda: panel.paused() if panel is not None else contextlib.nullcontext())
        recorder = Recorder(writer, list(cell.cameras), decide, queue_size=args.queue,
                            on_failure=lambda reason: driver[0].request_stop(f"recorder: {reason}", "recorder"))
        steps = _SessionLog(recorder, root, session, cell.scene)
        if args.device == "guiding":
            guided = GuidedRecording(cell.arm, cell.gripper, cell.cameras, device, steps, plan.safety, args.fps,
                                     estop=cell.estop, judge=cell.scene.verdict if cell.sim is not None else None)
            stack.callback(device.close)
            driver.append(guided)
            run = lambda: guided.run(plan.episodes, cell.scene, runner_cfg.max_episode_s)  # noqa: E731
        else:
            runner = cell.runner(device, f"teleop:{args.device}", steps=steps)
            stack.callback(runner.close)  # also closes the device
            driver.append(runner)
            run = lambda: runner.run(plan.episodes)  # noqa: E731
        stop_on_signals(driver[0])
        panel = RecordingPanel(recorder, args.task, args.device, plan.episodes, args.fps, help_text, console)
        console.print(f"recording [b]{args.task}[/b] into {root} ({writer.num_episodes} episodes there already)")
        with panel.shown():
            run()
        console.print()
        return recorder.history


class _SessionLog:
    """Passes the loop's ticks to the recorder, and notes each kept episode's sim seed in the session file (what
    `dv-teleop replay` needs to rebuild the same layout)."""

    def __init__(self, recorder: Recorder, root: Path, session: dict[str, Any], scene: Any) -> None:
        self.recorder, self.root, self.session, self.scene = recorder, root, session, scene
        self.begin, self.record = recorder.begin, recorder.record

    def end(self, record: EpisodeRecord) -> None:
        self.recorder.end(record)
        p = self.recorder.progress
        if p.kept and p.dataset_index is not None:
            seed = self.scene.seed(record.index) if hasattr(self.scene, "seed") else None
            self.session["episodes"][str(p.dataset_index)] = {"seed": seed, "outcome": record.outcome,
                                                             "success": record.success, "degraded": p.degraded}
            write_session(self.root, self.session)


def _record_table(history: list[EpisodeProgress]) -> Table:
    table = Table("episode", "outcome", "steps", "dropped", "rate [Hz]", "kept as", title="recorded episodes")
    for p in history:
        kept = f"episode {p.dataset_index}" if p.kept else f"discarded{f': {p.error}' if p.error else ''}"
        table.add_row(str(p.episode), p.outcome, str(p.written), f"{p.dropped}{' (degraded)' if p.degraded else ''}",
                      f"{p.fps:.1f}", kept)
    return table


# ------------------------------------------------------------------------------------------- replay


def _replay(args: argparse.Namespace) -> int:
    from teleop.replay import replay_episode, tracking_table

    result = replay_episode(args.root, args.episode, sim=args.sim, launch=args.launch, seed=args.seed)
    console.print(tracking_table(result))
    console.print(f"replay outcome: {result.outcome}, success: {result.success}")
    if args.json is not None:
        L.atomic_write_json(args.json, dataclasses.asdict(result))
    deviation_mm = result.tracking.path_deviation_max_m * 1e3
    if args.tolerance_mm is not None and deviation_mm > args.tolerance_mm:
        console.print(f"[red]the replayed TCP left the recorded path by {deviation_mm:.1f} mm "
                      f"(tolerance {args.tolerance_mm} mm)[/red]")
        return 1
    return 0


# ------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dv-teleop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record demonstrations")
    rec.add_argument("--task", required=True, help="task name, e.g. drawer_open")
    rec.add_argument("--device", choices=DEVICES, default="keyboard")
    rec.add_argument("--sim", action="store_true", help="the embedded sim workcell (franky-sim + MuJoCo)")
    rec.add_argument("--launch", type=Path, help="launch YAML (default with --sim: launch/sim.yaml)")
    rec.add_argument("--episodes", type=int, help="episodes to run (default: the launch file's)")
    rec.add_argument("--root", type=Path, help="dataset directory (default: runs/datasets/TASK); resumed if present")
    rec.add_argument("--fps", type=int, default=15, help="recording = control rate (Hz)")
    rec.add_argument("--keep", choices=KEEP_RULES, default="ask",
                     help="ask the operator (default), keep successes only, or keep every episode not aborted")
    rec.add_argument("--seed", type=int, default=0, help="sim layout seed of the first episode (then +1 each)")
    rec.add_argument("--max-episode-s", type=float, help="episode time limit (default: 300 s for a person)")
    rec.add_argument("--video-codec", choices=["h264", "mp4v"], default="h264",
                     help="h264 through PyAV (default; lerobot's tools accept it), or OpenCV's mp4v (faster to encode)")
    rec.add_argument("--queue", type=int, default=64, help="write queue length in frames before frames drop")
    add_log_level_option(rec)
    rep = sub.add_parser("replay", help="replay a recorded episode's actions through the robot runtime")
    rep.add_argument("root", type=Path, help="dataset directory")
    rep.add_argument("--episode", type=int, required=True)
    rep.add_argument("--sim", action="store_true")
    rep.add_argument("--launch", type=Path, help="launch YAML (default with --sim: launch/sim.yaml)")
    rep.add_argument("--seed", type=int, help="sim layout seed (default: the one the session file recorded)")
    rep.add_argument("--tolerance-mm", type=float,
                     help="exit 1 if the replayed TCP strays further than this from the recorded path")
    rep.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    add_log_level_option(rep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from robot.launch import LaunchConfigError

    failures = (UsageError, DeviceUnavailable, ReplayError, EStopRefused, LaunchConfigError, ValidationError,
                ResumeMismatch, EpisodeAborted, FileNotFoundError)
    try:
        if args.command == "replay":
            return _replay(args)
        plan = _plan(args)
    except failures as exc:
        return print_error(console, exc)
    announce_overrides(console, list(plan.overrides))
    try:
        started = time.monotonic()
        history = _record(args, plan)
    except failures as exc:
        return print_error(console, exc)
    else:
        console.print(_record_table(history))
        kept = sum(1 for p in history if p.kept)
        console.print(f"{kept} of {len(history)} episodes kept in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        announce_overrides(console, list(plan.overrides))


if __name__ == "__main__":
    sys.exit(main())
