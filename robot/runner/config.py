"""`RunnerConfig`: the control loop's own settings (the limits it enforces live in `robot.safety.SafetyConfig`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from robot.execution import Mode


class RunnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_hz: float = Field(15.0, gt=0, le=100, description="Control rate (Seer and DROID run at 15 Hz).")
    chunk_length: int = Field(3, ge=1, le=64, description="Actions per reply (DreamVLA: 3).")
    mode: Mode = Field("chunk", description="chunk (open loop), receding (first action, replan every tick) or "
                       "ensemble (temporal ensembling).")
    ensemble_k: float = Field(0.01, ge=0, description="Ensemble weights exp(-k·i), i = 0 the oldest reply.")
    max_episode_s: float = Field(30.0, gt=0, description="An episode that has not ended by then stops ('time_limit').")
    reply_wait: float = Field(0.5, ge=0, lt=1, description="Fraction of a tick the loop may wait for a reply to its "
                              "own request before acting, so that a fast reply's first action runs on time.")
    success_check_period_s: float = Field(0.5, gt=0, description="How often the scene's success predicate is read.")
    status_period_s: float = Field(0.2, gt=0, description="How often the status sink (e-stop console) is fed.")
    settle_timeout_s: float = Field(5.0, gt=0, description="At episode end, the longest wait for the arm to stop.")
    estop_wait_s: float = Field(10.0, gt=0, description="At the start of a run, the longest wait for a required "
                                "e-stop console to connect.")
    policy_reset_timeout_s: float = Field(10.0, gt=0, description="The longest wait for the policy's episode reset.")
    watchdog_timeout_s: float = Field(0.15, gt=0.02, le=1.0, description="The e-stop watchdog latches a stop when "
                                      "the loop has not ticked for this long during an episode (S2: a stalled loop "
                                      "supervises nothing). The loop beats at least every 10 ms; detection plus a "
                                      "stop from full speed at the bring-up dynamics stays within 500 ms. "
                                      "Range (0.02, 1] s.")
    backstop_kill_after_s: float | None = Field(None, gt=0.1, le=5.0, description="Opt-in process backstop: a "
                                                "child process kills this one when the e-stop watchdog has not run "
                                                "for this long (a stall that holds the GIL), so the FCI link drops "
                                                "and the robot stops itself. Loses the episode being recorded. None "
                                                "(default): off. Range None or (0.1, 5] s.")
