"""The control loop and its episodes: `Runner` (the loop), `RunnerConfig`, scenes, reports.

    runner = Runner(RunnerConfig(), SafetyConfig(), arm=arm, gripper=gripper, cameras=cameras,
                    policy=policy, scene=SimScene(cell, arm, gripper), task="pick_bottle")
    summary = runner.run(episodes=2)
"""

from robot.runner.config import RunnerConfig
from robot.runner.devices import ArmLike, CameraLike, GripperLike, StatusSink, StopSignal
from robot.runner.loop import Runner
from robot.runner.report import (
    EpisodeRecord,
    RunSummary,
    episode_table,
    interventions_table,
    latency_table,
)
from robot.runner.scenes import OperatorScene, Scene, SimScene
from robot.runner.steps import StepSink, TickRecord

__all__ = [
    "ArmLike",
    "CameraLike",
    "EpisodeRecord",
    "GripperLike",
    "OperatorScene",
    "Runner",
    "RunnerConfig",
    "RunSummary",
    "Scene",
    "SimScene",
    "StatusSink",
    "StepSink",
    "StopSignal",
    "TickRecord",
    "episode_table",
    "interventions_table",
    "latency_table",
]
