"""Chunk execution: the action convention, and one robot-clock timeline for the actions of every reply.

The convention (docs/conventions.md#actions): an action is [dx, dy, dz, droll, dpitch, dyaw, gripper] in robot units, a
relative pose in the frame of the previous *commanded* target, composed as T_target[k+1] = T_target[k] · Δ[k]
(Euler extrinsic xyz); gripper 1 = open, 0 = closed.

The timeline (docs/conventions.md#when-an-action-runs; diffusion_policy's `exec_actions`): action k of a reply to the
observation taken at t_obs is due at t_obs + k·dt, i.e. on the tick nearest that time. Actions whose tick has
already passed when the reply arrives are dropped ('past_due'), and any action whose observation is older than
`max_obs_age` when it would start is dropped ('stale'): late data fails loudly instead of moving the arm
(zguide's Suicidal Snail). Three ways to turn overlapping replies into one action per tick:
- `chunk`: open loop; the next request goes out only when the current chunk is used up;
- `receding`: a request every tick; the newest reply's action for the tick wins (first action, replan);
- `ensemble`: a request every tick; all replies' actions for the tick are averaged with weights exp(-k·i),
  i = 0 the oldest, k = 0.01 (ACT's temporal ensembling as DreamVLA's released code applies it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial.transform import Rotation

from robot.geometry import inv_T, make_T
from robot.safety import Interventions

Mode = Literal["chunk", "receding", "ensemble"]
MODES: tuple[Mode, ...] = ("chunk", "receding", "ensemble")


# ---------------------------------------------------------------------------------------- the convention


def delta_transform(action: np.ndarray) -> np.ndarray:
    """The 4x4 relative pose Δ of one action's first six values (metres, radians)."""
    return make_T(Rotation.from_euler("xyz", action[3:6]).as_matrix(), action[:3])


def delta_between(T_from: np.ndarray, T_to: np.ndarray) -> np.ndarray:
    """The six pose values of the action that takes target `T_from` to `T_to`: Δ = inv(T_from) · T_to."""
    D = inv_T(T_from) @ T_to
    return np.concatenate([D[:3, 3], Rotation.from_matrix(D[:3, :3]).as_euler("xyz")])


def compose(T: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The next commanded target: T · Δ(action)."""
    return T @ delta_transform(action)


def predicted_positions(T_start: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """TCP positions (K, 3) the chunk's actions would command one after another from `T_start`."""
    out, T = [], T_start
    for action in actions:
        T = compose(T, action)
        out.append(T[:3, 3])
    return np.array(out)


def state_vector(T_base_ee: np.ndarray, gripper_open: bool) -> np.ndarray:
    """The model's state input [x, y, z, roll, pitch, yaw, gripper_open] (float32)."""
    euler = Rotation.from_matrix(T_base_ee[:3, :3]).as_euler("xyz")
    return np.array([*T_base_ee[:3, 3], *euler, 1.0 if gripper_open else 0.0], dtype=np.float32)


# ---------------------------------------------------------------------------------------- the timeline


@dataclass(frozen=True)
class Step:
    """The action chosen for one tick, and the capture time of the newest observation behind it."""

    action: np.ndarray
    t_obs_ns: int


@dataclass(frozen=True)
class _Planned:
    order: int  # arrival order: 0 is the oldest reply (the ensemble's i)
    first_slot: int  # tick of action 0
    actions: np.ndarray
    t_obs_ns: int
    oldest_capture_ns: int  # the oldest stream of the observation (state or a camera frame)

    def covers(self, slot: int) -> bool:
        return self.first_slot <= slot < self.first_slot + len(self.actions)


class Timeline:
    """The accepted actions of one episode on its tick grid t0 + n·dt (monotonic nanoseconds)."""

    def __init__(self, mode: Mode, t0_ns: int, dt_ns: int, max_obs_age_ns: int, interventions: Interventions,
                 ensemble_k: float = 0.01) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.t0_ns, self.dt_ns = mode, t0_ns, dt_ns
        self.max_obs_age_ns, self.ensemble_k = max_obs_age_ns, ensemble_k
        self.interventions = interventions
        self._chunks: list[_Planned] = []
        self._order = 0

    def slot(self, t_ns: int) -> int:
        """The tick nearest `t_ns`."""
        return round((t_ns - self.t0_ns) / self.dt_ns)

    def add(self, actions: np.ndarray, t_obs_ns: int, oldest_capture_ns: int, now_slot: int) -> int:
        """Place a validated reply; returns how many of its actions are still to come (past-due ones dropped)."""
        first = self.slot(t_obs_ns)
        late = max(0, min(len(actions), now_slot - first))
        if late:
            self.interventions.record("past_due", f"{late} of {len(actions)} actions arrived after their tick", n=late)
        if late == len(actions):
            return 0
        self._chunks.append(_Planned(self._order, first, actions, t_obs_ns, oldest_capture_ns))
        self._order += 1
        return len(actions) - late

    def needs_request(self, slot: int, now_ns: int) -> bool:
        """Whether this tick should ask the policy: always, except in open-loop chunk mode with actions left."""
        self._prune(slot, now_ns)
        return self.mode != "chunk" or not self._chunks

    def take(self, slot: int, now_ns: int) -> Step | None:
        """The action for tick `slot` at time `now_ns`, or None."""
        self._prune(slot, now_ns)
        candidates = [c for c in self._chunks if c.covers(slot)]
        if not candidates:
            return None
        newest = candidates[-1]
        if self.mode != "ensemble":
            return Step(newest.actions[slot - newest.first_slot], newest.t_obs_ns)
        weights = np.exp(-self.ensemble_k * np.arange(len(candidates)))  # candidates are oldest first
        rows = np.stack([c.actions[slot - c.first_slot] for c in candidates])
        return Step(weights @ rows / weights.sum(), newest.t_obs_ns)

    def _prune(self, slot: int, now_ns: int) -> None:
        """Forget used-up replies, and drop (counting them) the remaining actions of replies too old to act on."""
        kept = []
        for c in self._chunks:
            left = c.first_slot + len(c.actions) - slot
            if left <= 0:
                continue
            if now_ns - c.oldest_capture_ns > self.max_obs_age_ns:
                self.interventions.record("stale", f"observation {(now_ns - c.oldest_capture_ns) / 1e6:.0f} ms old; "
                                                   f"{min(left, len(c.actions))} actions dropped", severe=True,
                                          n=min(left, len(c.actions)))
            else:
                kept.append(c)
        self._chunks = kept

    def clear(self) -> None:
        """Forget every planned action (SAFE-HOLD: nothing planned before it may run after it)."""
        self._chunks.clear()
