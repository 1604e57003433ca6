"""robot/kinematics.py: the FR3 model the safety envelope uses (A4 joint-target prediction, A8 κ).

FK is checked against franky-sim's reported O_T_EE (`ArmState.T_base_ee`) at home and after joint moves, the
Jacobian against finite differences of FK. Errors are printed with `-s`.

franky-sim reports O_T_EE = O_T_EE_d, the pose of the *desired* joints q_d, also once the arm is at rest, while
the measured q settles up to ~2 mrad away from q_d (the simulated joint controller's steady-state error under
gravity). So the model is checked against q_d (to float32 precision), and FK(q) against O_T_EE within the
1 mm / 0.1° the envelope needs plus what that q - q_d gap accounts for.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot.kinematics import condition_number, dls_step, fk, jacobian
from robot.safety.config import FR3_Q_MAX, FR3_Q_MIN
from robot.tasks import HOME_Q

Q_LO, Q_HI = np.array(FR3_Q_MIN), np.array(FR3_Q_MAX)


def pose_error(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(position error mm, rotation error degrees) between two poses."""
    return (float(np.linalg.norm(A[:3, 3] - B[:3, 3]) * 1e3),
            float(np.degrees(np.linalg.norm(Rotation.from_matrix(A[:3, :3].T @ B[:3, :3]).as_rotvec()))))


def random_q(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(Q_LO + 0.1, Q_HI - 0.1)


def test_jacobian_matches_finite_differences_of_fk():
    """Each column of J is the ee's [v; ω] per unit rate of one joint, in base (central differences, 50 poses)."""
    rng, h = np.random.default_rng(0), 1e-6
    for _ in range(50):
        q = random_q(rng)
        J, numeric = jacobian(q), np.empty((6, 7))
        for i in range(7):
            dq = np.zeros(7)
            dq[i] = h
            T_plus, T_minus = fk(q + dq), fk(q - dq)
            numeric[:3, i] = (T_plus[:3, 3] - T_minus[:3, 3]) / (2 * h)
            numeric[3:, i] = Rotation.from_matrix(T_plus[:3, :3] @ T_minus[:3, :3].T).as_rotvec() / (2 * h)
        np.testing.assert_allclose(J, numeric, atol=1e-6)


def test_dls_step_reaches_a_small_twist():
    """One damped least-squares step lands within 5 % of a 10 mm / 0.02 rad twist away from singularities (the
    rest is the second-order term a single linear step leaves out)."""
    q = np.array(HOME_Q)
    twist = np.array([0.01, -0.005, 0.003, 0.02, 0.0, -0.01])
    T0, T1 = fk(q), fk(q + dls_step(jacobian(q), twist))
    achieved = np.concatenate([T1[:3, 3] - T0[:3, 3], Rotation.from_matrix(T1[:3, :3] @ T0[:3, :3].T).as_rotvec()])
    relative = np.linalg.norm(achieved - twist) / np.linalg.norm(twist)
    print(f"\nDLS step: {relative:.1%} off a 10 mm / 0.02 rad twist")
    assert relative < 0.05


def test_condition_number_at_home_is_far_from_the_a8_thresholds():
    kappa = condition_number(jacobian(np.array(HOME_Q)))
    print(f"\nκ at HOME_Q = {kappa:.2f}")
    assert kappa < 10


def _settled(arm, timeout_s: float = 3.0):
    """The state once q stops changing: franky-sim reports the commanded O_T_EE as soon as a motion ends while
    the joints still converge for ~0.5 s."""
    state = arm.read_state()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        new = arm.read_state()
        if np.max(np.abs(new.joint_positions - state.joint_positions)) < 1e-5:
            return new
        state = new
    pytest.fail("the joints did not settle")


@pytest.mark.parametrize("q", [
    HOME_Q,
    (0.3, -0.4, -0.2, -2.0, 0.25, 1.8, 0.2),
    (-0.5, 0.1, 0.4, -1.6, -0.6, 2.2, 1.2),
    (0.8, -0.9, 0.6, -2.6, 0.9, 1.3, -0.7),
], ids=["home", "move1", "move2", "move3"])
def test_fk_reproduces_franky_sims_end_effector_pose(devices, cell, q):
    """FK reproduces the O_T_EE franky-sim reports (franky's `ee` frame): exactly (float32) for the desired joints
    q_d it is computed from; for the measured q at rest within 1 mm and 0.1° plus the pose change J·(q - q_d)."""
    arm, _ = devices
    assert arm.move_joints(q, asynchronous=False)
    state = _settled(arm)
    q_meas, q_d = state.joint_positions, np.array(arm.robot.state.q_d)
    mm_d, deg_d = pose_error(fk(q_d), state.T_base_ee)
    mm, deg = pose_error(fk(q_meas), state.T_base_ee)
    gap = jacobian(q_meas) @ (q_meas - q_d)  # (6,) the pose change the tracking error alone accounts for
    gap_mm, gap_deg = float(np.linalg.norm(gap[:3]) * 1e3), float(np.degrees(np.linalg.norm(gap[3:])))
    print(f"\n{tuple(round(v, 3) for v in q)}: |FK(q_d) - O_T_EE| = {mm_d:.4f} mm, {deg_d:.5f}°; "
          f"|FK(q) - O_T_EE| = {mm:.4f} mm, {deg:.4f}° (|q - q_d| = {np.abs(q_meas - q_d).max() * 1e3:.2f} mrad, "
          f"J·(q - q_d) = {gap_mm:.4f} mm, {gap_deg:.4f}°); κ = {condition_number(jacobian(q_meas)):.2f}")
    assert mm_d < 0.01 and deg_d < 0.001
    assert mm < 1.0 + gap_mm and deg < 0.1 + gap_deg
    if q != HOME_Q:
        assert arm.move_joints(HOME_Q, asynchronous=False)
        _settled(arm)
