"""`dv-estop`: the operator's e-stop console — STOP on the space bar, RESUME on R then Y, a live status panel.

Heartbeats come from their own thread (`HeartbeatSender`), so this loop may block on keys or drawing without
ever starving the robot's dead-man check. Quitting — Q, Ctrl-C, SIGTERM, or a crash — sends STOP and then
stops the heartbeats, so the robot latches a stop either way.

Without a TTY (or with --no-keys) the console reads command words from stdin (`stop`, `resume`, `yes`, `quit`)
and prints one line per event instead of the panel: `READY <endpoint> <nonce>` first, then `SENT ...` and
`ROBOT ...` lines. That is how the tests and headless launches drive it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.live import Live

from robot.estop.controls import Action, Controls
from robot.estop.heartbeat import HeartbeatSender
from robot.estop.keys import KeySource, LineCommands, RawKeys
from robot.estop.panel import STALE_S, render
from robot.estop.status import ReceivedStatus, StatusSubscriber
from robot.estop.wire import HEARTBEAT_ENDPOINT, STATUS_ENDPOINT

log = logging.getLogger("dv-estop")
_TICK_S = 0.05  # key wait per loop iteration = panel refresh period


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dv-estop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=HEARTBEAT_ENDPOINT, help="the robot's heartbeat endpoint")
    p.add_argument("--status-endpoint", default=STATUS_ENDPOINT, help="the robot's status endpoint")
    p.add_argument("--no-keys", action="store_true", help="read command words from stdin instead of keys")
    p.add_argument("--log-file", type=Path, help="append every command and robot state change here")
    return p


def _robot_line(received: ReceivedStatus | None) -> str:
    if received is None or received.age_s() > STALE_S:
        return "ROBOT none"
    s = received.status
    return f"ROBOT {s.state.value} estop={s.estop or '-'} task={s.task or '-'} episode={s.episode}/{s.episodes}"


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _loop(keys: KeySource, controls: Controls, sender: HeartbeatSender, status: StatusSubscriber,
          show: Callable[[ReceivedStatus | None], None], plain: bool) -> int:
    while True:
        key = keys.read(_TICK_S)
        action = Action.NONE if key is None else controls.press(key)
        if action is Action.QUIT:
            return 0
        if action is not Action.NONE:
            log.info("%s: %s", action.value, controls.message)
            if plain and action in (Action.STOP, Action.RESUME):
                print(f"SENT {action.value}", flush=True)
        if not sender.alive:
            log.error("the heartbeat thread died; the robot will latch a stop")
            return 1
        show(status.poll())


def _run_panel(controls: Controls, sender: HeartbeatSender, status: StatusSubscriber, endpoint: str) -> int:
    nonce = sender.nonce.hex()
    with RawKeys(sys.stdin.fileno()) as keys, Live(console=Console(), auto_refresh=False) as live:
        def show(received: ReceivedStatus | None) -> None:
            live.update(render(sender.state, nonce, endpoint, received, controls.message, time.monotonic_ns()),
                        refresh=True)

        return _loop(keys, controls, sender, status, show, plain=False)


def _run_lines(controls: Controls, sender: HeartbeatSender, status: StatusSubscriber, endpoint: str) -> int:
    print(f"READY {endpoint} {sender.nonce.hex()}", flush=True)
    last = ""

    def show(received: ReceivedStatus | None) -> None:
        nonlocal last
        line = _robot_line(received)
        if line != last:
            print(line, flush=True)
            log.info(line)
            last = line

    return _loop(LineCommands(sys.stdin.fileno()), controls, sender, status, show, plain=True)


def run(args: argparse.Namespace) -> int:
    sender = HeartbeatSender(args.endpoint)
    status = StatusSubscriber(args.status_endpoint)
    controls = Controls(sender)
    log.info("console %s heartbeating to %s, status from %s", sender.nonce.hex(), args.endpoint,
             args.status_endpoint)
    try:
        if sys.stdin.isatty() and not args.no_keys:
            return _run_panel(controls, sender, status, args.endpoint)
        return _run_lines(controls, sender, status, args.endpoint)
    finally:
        sender.stop()  # an explicit STOP latches the robot at once instead of after the heartbeat timeout
        time.sleep(0.02)
        sender.close()
        status.close()
        log.info("quit: STOP sent, heartbeats stopped")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers: list[logging.Handler] = []
    if args.log_file is not None:
        args.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=logging.INFO, handlers=handlers or [logging.NullHandler()],
                        format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear line instead of a traceback in the middle of the panel
        print(f"dv-estop: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
