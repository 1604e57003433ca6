"""The software e-stop: the `dv-estop` console's dead-man heartbeat, the robot's `EStopListener`, and the status
channel the runner publishes for the console.

Nothing here is safety-rated (safety_reliability.md §0): the hardware e-stop stays the real safety function.
"""

from robot.estop.listener import EStopListener, EStopMode, EStopState, StopReason
from robot.estop.status import StatusPublisher
from robot.estop.wire import HEARTBEAT_ENDPOINT, STATUS_ENDPOINT, Latency, RobotState, RobotStatus

__all__ = [
    "HEARTBEAT_ENDPOINT",
    "STATUS_ENDPOINT",
    "EStopListener",
    "EStopMode",
    "EStopState",
    "Latency",
    "RobotState",
    "RobotStatus",
    "StatusPublisher",
    "StopReason",
]
