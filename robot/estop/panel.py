"""The console's live panel: what this console commands, and what the robot last reported.

The two are shown side by side on purpose: the operator must see both that STOP was sent and that the robot
reports it (its e-stop view comes back on the status channel). A status older than `STALE_S` is shown as
missing rather than as the robot's current state.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from robot.estop.heartbeat import SenderState
from robot.estop.status import ReceivedStatus
from robot.estop.wire import Command, RobotState

STALE_S = 1.0
_STATE_STYLE = {
    RobotState.RUN: "bold green",
    RobotState.PAUSE: "bold cyan",
    RobotState.HOLD: "bold yellow",
    RobotState.STOP: "bold white on red",
    RobotState.FAULT: "bold white on magenta",
}


def _console_column(sender: SenderState, nonce: str, endpoint: str) -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_row(Text("this console sends", style="dim"))
    stopped = sender.command is Command.STOP
    t.add_row(Text(" STOP SENT " if stopped else " RUN ", style="bold white on red" if stopped else "bold green"))
    t.add_row(f"console {nonce} → {endpoint}")
    t.add_row(f"heartbeats {sender.sent} · stops {sender.stops} · resumes {sender.resumes}")
    return t


def _robot_column(received: ReceivedStatus | None, now_ns: int) -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_row(Text("the robot reports", style="dim"))
    if received is None or received.age_s(now_ns) > STALE_S:
        age = "" if received is None else f" (last {received.age_s(now_ns):.1f} s ago)"
        t.add_row(Text(f" NO STATUS{age} ", style="bold black on yellow"))
        return t
    s = received.status
    t.add_row(Text(f" {s.state.value} ", style=_STATE_STYLE[s.state]))
    t.add_row(f"e-stop: {s.estop or '—'}")
    t.add_row(f"task {s.task or '—'} · episode {s.episode}/{s.episodes}")
    return t


def _numbers(received: ReceivedStatus | None) -> Table:
    t = Table(expand=True, show_edge=False)
    t.add_column("latency (ms)")
    t.add_column("p50", justify="right")
    t.add_column("p95", justify="right")
    t.add_column("intervention")
    t.add_column("count", justify="right")
    if received is None:
        return t
    lat = sorted(received.status.latency_ms.items())
    inter = sorted(received.status.interventions.items())
    for i in range(max(len(lat), len(inter))):
        stage, stat = lat[i] if i < len(lat) else ("", None)
        rule, count = inter[i] if i < len(inter) else ("", None)
        t.add_row(stage, f"{stat.p50_ms:.1f}" if stat else "", f"{stat.p95_ms:.1f}" if stat else "",
                  rule, "" if count is None else str(count))
    return t


def render(sender: SenderState, nonce: str, endpoint: str, received: ReceivedStatus | None, message: str,
           now_ns: int) -> RenderableType:
    top = Table.grid(expand=True, padding=(0, 2))
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(_console_column(sender, nonce, endpoint), _robot_column(received, now_ns))
    parts: list[RenderableType] = [top, _numbers(received)]
    if received is not None and received.status.last_error:
        parts.append(Text(f"last error: {received.status.last_error}", style="red"))
    parts.append(Text(message, style="bold"))
    return Panel(Group(*parts), title="dv-estop", subtitle="SPACE stop · R+Y resume · Q quit")
