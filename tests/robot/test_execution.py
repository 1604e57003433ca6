"""Chunk execution as pure logic: the action convention, the robot-clock timeline, the three modes, and the
local policies (scripted, replay) that express absolute plans as chunks in the same convention.

Rows of the fault matrix (docs/safety.md#fault-matrix) or the convention (docs/conventions.md) named in each docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from robot.execution import Timeline, compose, delta_between, delta_transform, predicted_positions, state_vector
from robot.geometry import make_T
from robot.policy import Observation, ReplayPolicy, ScriptedPolicy
from robot.safety import Interventions

DT_NS = 66_666_667
MAX_AGE_NS = 250_000_000
T0 = 1_000_000_000
TOOL_DOWN = np.diag([1.0, -1.0, -1.0, 1.0])  # the home pose's rotation: ee z pointing down
TOOL_DOWN[:3, 3] = [0.3, 0.0, 0.5]


def timeline(mode: str = "chunk", k: float = 0.01) -> Timeline:
    return Timeline(mode, T0, DT_NS, MAX_AGE_NS, Interventions(), ensemble_k=k)


def chunk(*rows: float) -> np.ndarray:
    """A (len(rows), 7) chunk whose dx column holds `rows` (an easy way to tell actions apart)."""
    out = np.zeros((len(rows), 7))
    out[:, 0] = rows
    return out


def tick(n: int, offset_ns: int = 2_000_000) -> int:
    """A time a little after tick n (the state is read right after the tick starts)."""
    return T0 + n * DT_NS + offset_ns


# ------------------------------------------------------------------------------------------------ convention

small = st.floats(-0.05, 0.05)


@settings(max_examples=100, deadline=None)
@given(action=st.tuples(*(small,) * 6).map(np.array), start=st.tuples(*(st.floats(-math.pi, math.pi),) * 3))
def test_delta_round_trip(action, start):
    """docs/conventions.md#actions: execution composes T[k+1] = T[k]·Δ[k]; recording derives
    Δ[k] = inv(T[k])·T[k+1] — the same six numbers come back."""
    T = make_T(Rotation.from_euler("xyz", start).as_matrix(), np.zeros(3))
    np.testing.assert_allclose(delta_between(T, compose(T, action)), action, atol=1e-9)


def test_delta_is_expressed_in_the_previous_target_frame():
    """docs/conventions.md#actions: dx, dy, dz are along the previous commanded target's axes, not the base axes.
    With the tool pointing down (ee z = -base z), +dz moves the TCP down and +dy moves it towards -base y."""
    after = compose(TOOL_DOWN, np.array([0.0, 0.01, 0.02, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(after[:3, 3], [0.3, -0.01, 0.48])
    np.testing.assert_allclose(delta_transform(np.array([0, 0, 0, 0, 0, math.pi / 2]))[:3, :3],
                               Rotation.from_euler("z", math.pi / 2).as_matrix(), atol=1e-12)
    path = predicted_positions(TOOL_DOWN, np.array([[0.01, 0, 0, 0, 0, 0, 1]] * 3))
    np.testing.assert_allclose(path[:, 0], [0.31, 0.32, 0.33])


def test_state_vector_layout():
    """docs/conventions.md#the-state-vector: [x, y, z, roll, pitch, yaw (Euler xyz), gripper_open 1/0], float32."""
    s = state_vector(TOOL_DOWN, gripper_open=False)
    assert s.dtype == np.float32 and s.shape == (7,)
    np.testing.assert_allclose(s, [0.3, 0.0, 0.5, math.pi, 0.0, 0.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------------------------------------ timeline


def test_actions_are_due_at_t_obs_plus_k_dt():
    """docs/conventions.md#when-an-action-runs: action k of a reply to the observation taken at tick n runs at
    tick n + k."""
    tl = timeline()
    assert tl.add(chunk(1, 2, 3), t_obs_ns=tick(10), oldest_capture_ns=tick(10), now_slot=10) == 3
    assert [tl.take(n, tick(n)).action[0] for n in (10, 11, 12)] == [1, 2, 3]
    assert tl.take(13, tick(13)) is None
    assert tl.interventions.counts == {}


def test_past_due_actions_are_dropped_and_counted():
    """P4: a reply that arrives after its first actions' ticks runs only what is still ahead; the rest is counted
    as past_due and never executed."""
    tl = timeline()
    assert tl.add(chunk(1, 2, 3), t_obs_ns=tick(10), oldest_capture_ns=tick(10), now_slot=12) == 1
    assert tl.take(12, tick(12)).action[0] == 3
    assert tl.interventions.counts == {"past_due": 2}
    assert tl.add(chunk(4, 5, 6), t_obs_ns=tick(20), oldest_capture_ns=tick(20), now_slot=23) == 0
    assert tl.take(23, tick(23)) is None


def test_stale_observations_never_execute():
    """O6: an action whose observation (its oldest stream, here a camera frame) is older than 250 ms when the
    action would start is dropped, with the rest of its chunk, and counted as stale."""
    tl = timeline()
    old_frame = tick(10) - 200_000_000  # the camera frame was already 200 ms old at the observation
    tl.add(chunk(1, 2, 3), t_obs_ns=tick(10), oldest_capture_ns=old_frame, now_slot=10)
    assert tl.take(10, tick(10)).action[0] == 1  # 202 ms old: still fresh
    assert tl.take(11, tick(11)) is None  # 269 ms: stale, and so is everything after it
    assert tl.take(12, tick(12)) is None
    assert tl.interventions.counts == {"stale": 2}


def test_chunk_mode_requests_only_when_the_chunk_is_used_up():
    """Open-loop chunk execution (openpi's ActionChunkBroker): the next request goes out at the tick after the
    last action of the current chunk."""
    tl = timeline("chunk")
    assert tl.needs_request(10, tick(10))
    tl.add(chunk(1, 2, 3), t_obs_ns=tick(10), oldest_capture_ns=tick(10), now_slot=10)
    assert [tl.needs_request(n, tick(n)) for n in (10, 11, 12, 13)] == [False, False, False, True]


def test_receding_horizon_takes_the_newest_reply():
    """Receding horizon: a request every tick, and for each tick the newest reply's action wins."""
    tl = timeline("receding")
    tl.add(chunk(1, 2, 3), t_obs_ns=tick(10), oldest_capture_ns=tick(10), now_slot=10)
    assert tl.take(10, tick(10)).action[0] == 1
    assert tl.needs_request(11, tick(11))
    tl.add(chunk(21, 22, 23), t_obs_ns=tick(11), oldest_capture_ns=tick(11), now_slot=11)
    step = tl.take(11, tick(11))
    assert step.action[0] == 21 and step.t_obs_ns == tick(11)
    assert tl.take(12, tick(12)).action[0] == 22  # a missing reply: the newest plan still covers the tick


def test_temporal_ensemble_weights_oldest_first():
    """Temporal ensembling as DreamVLA's released code applies ACT's: weights exp(-k·i), i = 0 the oldest reply,
    normalised; k = 0.01 by default (nearly uniform), a large k shows the order."""
    for k in (0.01, 1.0):
        tl = timeline("ensemble", k=k)
        tl.add(chunk(1, 2, 3), t_obs_ns=tick(10), oldest_capture_ns=tick(10), now_slot=10)
        tl.add(chunk(10, 20, 30), t_obs_ns=tick(11), oldest_capture_ns=tick(11), now_slot=11)
        tl.add(chunk(100, 200, 300), t_obs_ns=tick(12), oldest_capture_ns=tick(12), now_slot=12)
        w = np.exp(-k * np.arange(3))
        expected = (w @ [3.0, 20.0, 100.0]) / w.sum()
        assert tl.take(12, tick(12)).action[0] == pytest.approx(expected)


def test_clear_forgets_every_planned_action():
    """SAFE-HOLD: nothing planned before a hold may run after it."""
    tl = timeline("receding")
    tl.add(chunk(1, 2, 3), t_obs_ns=tick(10), oldest_capture_ns=tick(10), now_slot=10)
    tl.clear()
    assert tl.take(11, tick(11)) is None and tl.needs_request(11, tick(11))


# ------------------------------------------------------------------------------------------------ local policies


def observation(t_ns: int, T_commanded: np.ndarray, T_measured: np.ndarray | None = None) -> Observation:
    T_measured = T_commanded if T_measured is None else T_measured
    return Observation(state=state_vector(T_measured, True), images={}, capture_ns={"state": t_ns},
                       T_measured=T_measured, T_commanded=T_commanded)


class LineStepper:
    """A stand-in expert: +5 mm along base x per tick for `steps` ticks, gripper closing after the third, then
    holding still (as `ScriptedExpert` does once done)."""

    def __init__(self, T_start: np.ndarray, steps: int = 8) -> None:
        self.T, self.count, self.steps = T_start.copy(), 0, steps

    @property
    def done(self) -> bool:
        return self.count >= self.steps

    def act(self, T_measured: np.ndarray) -> tuple[np.ndarray, bool]:
        if self.done:
            return self.T, False
        self.count += 1
        self.T = self.T.copy()
        self.T[0, 3] += 0.005
        return self.T, self.count <= 3


def run_chunks(policy, ticks: int, used_per_infer: int) -> list[np.ndarray]:
    """Drive a local policy like the loop: infer every `used_per_infer` ticks, compose the actions used."""
    T_cmd, targets = TOOL_DOWN.copy(), []
    for n in range(0, ticks, used_per_infer):
        reply = policy.infer(observation(tick(n), T_cmd))
        if reply.done:
            break
        for action in reply.actions[:used_per_infer]:
            T_cmd = compose(T_cmd, action)
            targets.append(T_cmd)
    return targets


@pytest.mark.parametrize("used_per_infer", [1, 3])
def test_scripted_policy_reproduces_the_expert_in_any_mode(used_per_infer):
    """The scripted expert through the action convention: whether the loop uses 1 action per reply (receding) or
    all 3 (open-loop chunk), the composed targets are the expert's own, one per tick, then `done`."""
    policy = ScriptedPolicy(LineStepper, rate_hz=15.0)
    policy.reset("go")
    xs = [T[0, 3] for T in run_chunks(policy, ticks=20, used_per_infer=used_per_infer)]
    np.testing.assert_allclose(xs[:8], 0.3 + 0.005 * np.arange(1, 9), atol=1e-9)
    np.testing.assert_allclose(xs[8:], xs[7], atol=1e-9)  # a look-ahead past the end holds the last target


def test_scripted_policy_anchors_on_the_commanded_target():
    """After a clamp the loop's commanded target differs from the expert's; the next chunk's first delta is taken
    from the commanded target, so the error is corrected instead of accumulated."""
    policy = ScriptedPolicy(LineStepper, rate_hz=15.0)
    policy.infer(observation(tick(0), TOOL_DOWN))
    lagging = TOOL_DOWN.copy()
    lagging[0, 3] -= 0.002  # the envelope held the target 2 mm short
    reply = policy.infer(observation(tick(1), lagging))
    assert compose(lagging, reply.actions[0])[0, 3] == pytest.approx(0.3 + 0.010)


def test_replay_policy_follows_the_clock_pads_and_finishes():
    """Replay: recorded action i runs at tick i whatever the mode; the last chunk is padded with holds that keep
    the last gripper value; then `done`."""
    actions = np.zeros((5, 7))
    actions[:, 0] = np.arange(5)
    actions[:, 6] = [1, 1, 1, 0, 0]
    policy = ReplayPolicy(actions, rate_hz=15.0)
    policy.reset("replay")
    assert policy.infer(observation(tick(0), TOOL_DOWN)).actions[:, 0].tolist() == [0, 1, 2]
    assert policy.infer(observation(tick(1), TOOL_DOWN)).actions[:, 0].tolist() == [1, 2, 3]
    tail = policy.infer(observation(tick(4), TOOL_DOWN)).actions
    assert tail[:, 0].tolist() == [4, 0, 0] and tail[:, 6].tolist() == [0, 0, 0]
    assert policy.infer(observation(tick(5), TOOL_DOWN)).done
    with pytest.raises(ValueError, match="non-empty"):
        ReplayPolicy(np.zeros((0, 7)), rate_hz=15.0)
