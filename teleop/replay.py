"""Replay a recorded episode's actions through the robot runtime and measure how well the arm retraces it.

The recorded `action` column goes to the same `Runner` as `dv-robot` (timeline, safety envelope, e-stop) as a
`ReplayPolicy`; a probe on the loop's ticks collects the replayed end-effector path, which is compared tick by
tick (on the tick grid, so a skipped tick cannot shift the comparison) with the recorded `observation.state`.
A replay that tracks within a few millimetres shows that record time and run time use one action convention.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from rich.table import Table
from scipy.spatial.transform import Rotation

from robot.runner import EpisodeRecord, TickRecord
from teleop.dataset import layout as L


class ReplayError(RuntimeError):
    """The episode cannot be replayed as asked; the message says why."""


@dataclass(frozen=True)
class RecordedEpisode:
    index: int
    task: str | None  # the sim task name, from the session file
    seed: int | None
    fps: int
    actions: np.ndarray  # (N, 7) in the action convention
    states: np.ndarray  # (N, 7) observation.state: measured pose + gripper
    slots: np.ndarray  # (N,) tick index of each row on the episode's tick grid


def _session_entry(root: Path, index: int) -> dict:
    for path in sorted((root / "meta" / "dv_sessions").glob("*.json")):
        session = json.loads(path.read_text())
        if str(index) in session.get("episodes", {}):
            return {"task": session["task"], **session["episodes"][str(index)]}
    return {}


def load_episode(root: Path, index: int) -> RecordedEpisode:
    info_path = root / L.INFO
    if not info_path.exists():
        raise ReplayError(f"{root} is not a dataset ({L.INFO} missing)")
    info = json.loads(info_path.read_text())
    if not 0 <= index < info["total_episodes"]:
        raise ReplayError(f"{root} has episodes 0..{info['total_episodes'] - 1}; there is no episode {index}")
    table = pq.read_table(root / L.DATA_PATH.format(**L.chunk_file(index)))
    missing = {"action", "observation.state", "observation.capture_s"} - set(table.column_names)
    if missing:
        raise ReplayError(f"episode {index} lacks {sorted(missing)}: not recorded by dv-teleop")
    column = lambda name: np.array(table.column(name).to_pylist(), dtype=np.float64)  # noqa: E731
    fps = int(info["fps"])
    slots = np.round(column("observation.capture_s")[:, 0] * fps).astype(int)
    entry = _session_entry(root, index)
    return RecordedEpisode(index, entry.get("task"), entry.get("seed"), fps, column("action"),
                           column("observation.state"), slots)


@dataclass
class PathProbe:
    """A `StepSink` that keeps the replayed ticks' measured poses on the tick grid."""

    dt_ns: int
    t0_ns: int = 0
    poses: dict[int, np.ndarray] = field(default_factory=dict)

    def begin(self, episode: int, instruction: str) -> None:
        self.t0_ns, self.poses = 0, {}

    def record(self, tick: TickRecord) -> None:
        self.t0_ns = self.t0_ns or tick.tick_ns
        self.poses[round((tick.tick_ns - self.t0_ns) / self.dt_ns)] = tick.arm.T_base_ee.copy()

    def end(self, record: EpisodeRecord) -> None:
        return None


@dataclass(frozen=True)
class ReplayResult:
    episode: int
    outcome: str
    success: bool
    compared: int
    recorded: int
    max_position_error_m: float
    rms_position_error_m: float
    max_rotation_error_deg: float
    interventions: dict[str, int]


def compare(recorded: RecordedEpisode, poses: dict[int, np.ndarray]) -> tuple[int, float, float, float]:
    """(ticks compared, max and RMS position error, max rotation error in degrees) on common ticks."""
    errors, angles = [], []
    for slot, state in zip(recorded.slots, recorded.states, strict=True):
        if slot not in poses:
            continue
        T = poses[slot]
        errors.append(np.linalg.norm(T[:3, 3] - state[:3]))
        R_rec = Rotation.from_euler("xyz", state[3:6])
        angles.append(np.degrees((R_rec.inv() * Rotation.from_matrix(T[:3, :3])).magnitude()))
    if not errors:
        raise ReplayError("the replay produced no tick to compare with the recording")
    e = np.array(errors)
    return len(e), float(e.max()), float(np.sqrt(np.mean(e**2))), float(np.max(angles))


def replay_episode(root: Path, index: int, *, sim: bool, launch: Path | None = None,
                   seed: int | None = None) -> ReplayResult:
    from robot.arm import Arm, Gripper, GripperConfig
    from robot.cli import make_scene, open_devices, plan_run
    from robot.launch.config import DEFAULT_LAUNCH_FILE
    from robot.policy import ReplayPolicy
    from robot.runner import Runner, RunnerConfig, SimScene

    recorded = load_episode(root, index)
    if sim and recorded.task is None:
        raise ReplayError(f"the session files of {root} do not name episode {index}'s sim task")
    seed = recorded.seed if seed is None else seed
    args = argparse.Namespace(task=recorded.task or "replay", sim=sim, launch=launch or (DEFAULT_LAUNCH_FILE if sim
                              else None), mode="chunk", max_episode_s=len(recorded.actions) / recorded.fps + 10.0,
                              episodes=1, server=None, seed=seed or 0)
    plan = plan_run(args)
    cfg = RunnerConfig.model_validate({**plan.runner.model_dump(), "rate_hz": recorded.fps, "mode": "chunk"})
    probe = PathProbe(round(1e9 / cfg.rate_hz))
    with contextlib.ExitStack() as stack:
        cell, arm_cfg, cameras = open_devices(args, plan, stack)
        arm = stack.enter_context(Arm(arm_cfg))
        gripper = stack.enter_context(Gripper(GripperConfig(host=arm_cfg.host)))
        scene = SimScene(cell, arm, gripper, seeds=[seed or 0]) if cell is not None else make_scene(args, cell, arm,
                                                                                                  gripper)
        runner = Runner(cfg, plan.safety, arm=arm, gripper=gripper, cameras=cameras,
                        policy=ReplayPolicy(recorded.actions, cfg.rate_hz, cfg.chunk_length), scene=scene,
                        task=args.task, policy_name="replay", steps=probe)
        stack.callback(runner.close)
        summary = runner.run(1)
    record = summary.episodes[0]
    n, max_e, rms_e, max_deg = compare(recorded, probe.poses)
    return ReplayResult(index, record.outcome, record.success, n, len(recorded.actions), max_e, rms_e, max_deg,
                        dict(record.interventions))


def tracking_table(result: ReplayResult) -> Table:
    table = Table("episode", "outcome", "ticks compared", "max |Δp| [mm]", "RMS |Δp| [mm]", "max ΔR [deg]",
                  "interventions", title="replay vs recording (measured end-effector path)")
    table.add_row(str(result.episode), f"{result.outcome} (success: {result.success})",
                  f"{result.compared}/{result.recorded}", f"{result.max_position_error_m * 1e3:.2f}",
                  f"{result.rms_position_error_m * 1e3:.2f}", f"{result.max_rotation_error_deg:.2f}",
                  ", ".join(f"{k}={v}" for k, v in result.interventions.items()) or "none")
    return table
