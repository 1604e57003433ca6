"""The operator's hand in the sim workcell, for `--device guiding --sim`: nobody can push the simulated arm, so a
thread moves it along the task's scripted-expert path (standing in for the person) while the guiding loop only
reads it. It is also the guiding loop's `CommandSource`: the gripper follows the expert's plan and the episode
ends when the plan is done, as an operator's keys would."""

from __future__ import annotations

import threading
import time
from typing import Any

from robot.safety import SafetyConfig
from teleop.devices.command import TeleopCommand


class SimHand:
    def __init__(self, cell: Any, arm: Any, rate_hz: float, safety: SafetyConfig) -> None:
        self.cell, self.arm, self._period = cell, arm, 1.0 / rate_hz
        self._speed = min(0.15, 0.6 * safety.max_speed_mps)
        self._turn = min(0.6, 0.9 * safety.max_angular_speed_rps)
        self._rate_hz = rate_hz
        self._gripper_open, self._done = True, False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from robot.sim.experts import ScriptedExpert, plan_task

        self._halt()
        expert = ScriptedExpert(plan_task(self.cell.task, self.cell.state()), self.arm.read_state().T_base_ee,
                                rate_hz=self._rate_hz, max_speed=self._speed, max_angular_speed=self._turn)
        self._gripper_open, self._done = True, False
        self._stop.clear()
        self._thread = threading.Thread(target=self._move, args=(expert,), name="sim-hand", daemon=True)
        self._thread.start()

    def _move(self, expert: Any) -> None:
        while not self._stop.is_set() and not expert.done:
            T, self._gripper_open = expert.act(self.arm.read_state().T_base_ee)
            self.arm.move_to(T)
            time.sleep(self._period)
        self._done = expert.done

    def command(self) -> TeleopCommand:
        return TeleopCommand(gripper_open=self._gripper_open, end_episode=self._done)

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def close(self) -> None:
        self._halt()
