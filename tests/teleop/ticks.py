"""Synthetic loop ticks for recorder tests that need no sim: a straight-line motion seen by two small cameras."""

from __future__ import annotations

import numpy as np

from robot.arm import ArmState, GripperState
from robot.cameras import Frame
from robot.execution import state_vector
from robot.runner import EpisodeRecord, TickRecord

H, W = 24, 32
CAMERAS = {"static": (H, W, True), "wrist": (H, W, True)}
DT_NS = 66_666_667


HOME_Q = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])  # far from singularities and joint limits


def arm_state(T: np.ndarray, t_ns: int) -> ArmState:
    zeros = np.zeros(6)
    return ArmState(T, T[:3, 3].copy(), np.array([0, 0, 0, 1.0]), zeros[:3].copy(), HOME_Q.copy(), np.zeros(7), zeros,
                    zeros, "Move", (), t_ns // 1_000_000, t_ns)


def tick(i: int, t0_ns: int = 1_000_000_000, with_frames: bool = True) -> TickRecord:
    """Tick i moves the target 1 mm along x from where tick i-1 left it; frames carry i in their pixels."""
    t_ns = t0_ns + i * DT_NS
    T = np.eye(4)
    T[0, 3] = 0.3 + 0.001 * i
    target = T.copy()
    target[0, 3] += 0.001
    frames = {name: Frame(np.full((h, w, 3), i % 256, np.uint8), np.full((h, w), 500 + i, np.uint16),
                          t_ns - 5_000_000, i * 33.3, i) for name, (h, w, _) in CAMERAS.items()}
    action = np.array([0.001, 0, 0, 0, 0, 0, 1.0])
    return TickRecord(i, t_ns, state_vector(T, True), arm_state(T, t_ns + 100_000),
                      GripperState(0.08, False, True, False, None, t_ns), frames if with_frames else None, action,
                      target)


def episode_record(index: int, outcome: str = "success") -> EpisodeRecord:
    return EpisodeRecord(index, "drawer_open", "open the drawer", outcome, outcome == "success", 10, 10, 1.0, {}, {})
