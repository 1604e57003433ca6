"""Replay a recorded episode's actions through the robot runtime and measure how well the arm retraces it.

The recorded `action` column goes to the same `Runner` as `dv-robot` (timeline, safety envelope, e-stop) as a
`ReplayPolicy`; a probe on the loop's ticks collects the replayed end-effector path, which is compared tick by
tick (on the tick grid, so a skipped tick cannot shift the comparison) with the recorded `observation.state`.
A replay that tracks within a few millimetres shows that record time and run time use one action convention.
"""

from __future__ import annotations

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
    targets: np.ndarray  # (N, 7) action.target: commanded pose after the tick + gripper
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
    missing = {"action", "action.target", "observation.state", "observation.capture_s"} - set(table.column_names)
    if missing:
        raise ReplayError(f"episode {index} lacks {sorted(missing)}: not recorded by dv-teleop")
    column = lambda name: np.array(table.column(name).to_pylist(), dtype=np.float64)  # noqa: E731
    fps = int(info["fps"])
    slots = np.round(column("observation.capture_s")[:, 0] * fps).astype(int)
    entry = _session_entry(root, index)
    return RecordedEpisode(index, entry.get("task"), entry.get("seed"), fps, column("action"),
                           column("observation.state"), column("action.target"), slots)


@dataclass
class PathProbe:
    """A `StepSink` that keeps the replayed ticks' measured poses and commanded targets on the tick grid."""

    dt_ns: int
    t0_ns: int = 0
    poses: dict[int, np.ndarray] = field(default_factory=dict)
    targets: dict[int, np.ndarray] = field(default_factory=dict)

    def begin(self, episode: int, instruction: str) -> None:
        self.t0_ns, self.poses, self.targets = 0, {}, {}

    def record(self, tick: TickRecord) -> None:
        self.t0_ns = self.t0_ns or tick.tick_ns
        slot = round((tick.tick_ns - self.t0_ns) / self.dt_ns)
        self.poses[slot], self.targets[slot] = tick.arm.T_base_ee.copy(), tick.target.copy()

    def end(self, record: EpisodeRecord) -> None:
        return None


@dataclass(frozen=True)
class Tracking:
    """How the replay compares with the recording, over the ticks both have.

    path_deviation: distance of each replayed TCP position from the recorded TCP path (the polyline through the
    recorded positions within ±`PATH_WINDOW_S`), i.e. where the arm went, whatever the timing. same_tick_error:
    replayed vs recorded position at the same tick, which also counts timing (the sim's real-time factor shifts
    it). target_error: replayed vs recorded commanded targets: zero up to float32 storage unless the envelope
    clamped differently, so a convention mismatch between record and run time shows here first.
    """

    compared: int
    path_deviation_max_m: float
    path_deviation_rms_m: float
    same_tick_error_max_m: float
    target_error_max_m: float
    rotation_error_max_deg: float


PATH_WINDOW_S = 0.5


def _distance_to_polyline(p: np.ndarray, points: np.ndarray) -> float:
    if len(points) == 1:
        return float(np.linalg.norm(p - points[0]))
    a, b = points[:-1], points[1:]
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-18), 0.0, 1.0)
    return float(np.min(np.linalg.norm(a + t[:, None] * ab - p, axis=1)))


def compare(recorded: RecordedEpisode, poses: dict[int, np.ndarray], targets: dict[int, np.ndarray]) -> Tracking:
    window = max(1, round(PATH_WINDOW_S * recorded.fps))
    positions = recorded.states[:, :3]
    deviation, same_tick, target_error, angles = [], [], [], []
    for i, slot in enumerate(recorded.slots):
        if slot not in poses:
            continue
        p = poses[slot][:3, 3]
        deviation.append(_distance_to_polyline(p, positions[max(0, i - window):i + window + 1]))
        same_tick.append(np.linalg.norm(p - positions[i]))
        target_error.append(np.linalg.norm(targets[slot][:3, 3] - recorded.targets[i, :3]))
        R_rec = Rotation.from_euler("xyz", recorded.states[i, 3:6])
        angles.append(np.degrees((R_rec.inv() * Rotation.from_matrix(poses[slot][:3, :3])).magnitude()))
    if not deviation:
        raise ReplayError("the replay produced no tick to compare with the recording")
    d = np.array(deviation)
    return Tracking(len(d), float(d.max()), float(np.sqrt(np.mean(d**2))), float(np.max(same_tick)),
                    float(np.max(target_error)), float(np.max(angles)))


@dataclass(frozen=True)
class ReplayResult:
    episode: int
    outcome: str
    success: bool
    recorded: int
    tracking: Tracking
    interventions: dict[str, int]


def replay_episode(root: Path, index: int, *, sim: bool, launch: Path | None = None,
                   seed: int | None = None) -> ReplayResult:
    """Replay episode `index` of the dataset at `root` on the sim (the layout of its recorded seed, or `seed`) or
    on the rig `launch` describes, in chunk mode at the recorded rate, and compare the path with the recording."""
    from robot.launch.config import DEFAULT_LAUNCH_FILE
    from robot.policy import ReplayPolicy
    from robot.workcell import open_workcell, plan_workcell

    recorded = load_episode(root, index)
    if sim and recorded.task is None:
        raise ReplayError(f"the session files of {root} do not name episode {index}'s sim task")
    plan = plan_workcell(recorded.task or "replay", sim=sim, launch=launch or (DEFAULT_LAUNCH_FILE if sim else None),
                         seed=(recorded.seed if seed is None else seed) or 0, episodes=1, mode="chunk",
                         max_episode_s=len(recorded.actions) / recorded.fps + 10.0, rate_hz=recorded.fps)
    cfg = plan.runner
    probe = PathProbe(round(1e9 / cfg.rate_hz))
    with contextlib.ExitStack() as stack:
        cell = open_workcell(plan, stack)
        cell.await_estop_console()  # a replay moves the arm: the launch file's e-stop holds it too
        runner = cell.runner(ReplayPolicy(recorded.actions, cfg.rate_hz, cfg.chunk_length), "replay", steps=probe)
        stack.callback(runner.close)
        summary = runner.run(1)
    record = summary.episodes[0]
    return ReplayResult(index, record.outcome, record.success, len(recorded.actions),
                        compare(recorded, probe.poses, probe.targets), dict(record.interventions))


def tracking_table(result: ReplayResult) -> Table:
    t = result.tracking
    table = Table("measure", "value", title=f"replay of episode {result.episode} vs its recording "
                  f"({t.compared}/{result.recorded} ticks compared)")
    table.add_row("TCP distance from the recorded path, max / RMS",
                  f"{t.path_deviation_max_m * 1e3:.2f} / {t.path_deviation_rms_m * 1e3:.2f} mm")
    table.add_row("TCP error at the same tick, max", f"{t.same_tick_error_max_m * 1e3:.2f} mm")
    table.add_row("commanded target error, max", f"{t.target_error_max_m * 1e3:.3f} mm")
    table.add_row("orientation error, max", f"{t.rotation_error_max_deg:.2f} deg")
    table.add_row("interventions", ", ".join(f"{k}={v}" for k, v in result.interventions.items()) or "none")
    return table
