"""The software e-stop: the `dv-estop` console's dead-man heartbeat, the robot's `EStopListener`, the `Watchdog`
that services it on a thread of its own and halts the arm, and the status channel the runner publishes for the
console.

Nothing here is safety-rated (docs/safety.md): the hardware e-stop stays the real safety function.
"""

from robot.estop.listener import EStopListener, EStopMode, EStopState, StopReason
from robot.estop.status import StatusPublisher
from robot.estop.watchdog import Watchdog, halt
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
    "Watchdog",
    "halt",
]
