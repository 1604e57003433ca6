"""`dv-launch FILE`: run a workcell from a launch file — policy server, e-stop console and robot runner as
supervised processes, one log each under `processes.logs_dir`.

Order: (create the tiny checkpoint if the file asks for one) → `dv-serve`, wait for its READY line → the
e-stop console (in this terminal when it is one) → the runner. The run ends when any of them exits, or on
Ctrl-C / SIGTERM / SIGHUP: the runner is stopped first (SIGINT lets it stop the arm and write its summary),
then the console, then the server, each SIGINT → SIGTERM → SIGKILL with the file's timeouts; a second Ctrl-C
skips the waiting. The exit code is the runner's (2 for a bad launch file or a device that is missing or failing,
the policy server it starts included; otherwise 1 if the runner never ran). A safety override in force (a real
robot without e-stop, an unauthenticated remote server) is printed in red at the start and the end.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.text import Text

from robot.cli_support import announce_overrides
from robot.launch.config import LaunchConfig, LaunchConfigError, load_launch_config
from robot.launch.files import packaged_launch_files, resolve_launch_file
from robot.launch.process import ProcessSpec, Supervised

console = Console(stderr=True, soft_wrap=True)  # never wrap paths: logs and tests grep them
_POLL_S = 0.05


@dataclass(frozen=True)
class Plan:
    """The commands a launch file turns into, in start order (the server's READY gates the rest)."""

    create_checkpoint: ProcessSpec | None
    server: ProcessSpec | None
    estop: ProcessSpec | None
    runner: ProcessSpec


def _shell_code(code: int) -> int:
    """Popen's -N (killed by signal N) as a shell reports it: 128 + N."""
    return 128 - code if code < 0 else code


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def plan(cfg: LaunchConfig, launch_file: Path, task: str, episodes: int, interactive: bool) -> Plan:
    """Turn a launch config into commands (no side effects, so it can be shown and tested)."""
    logs = cfg.processes.logs_dir
    unbuffered = {"PYTHONUNBUFFERED": "1"}
    create = server = estop = None
    s = cfg.server
    if s.start:
        assert s.checkpoint is not None  # validated
        if s.create is not None and not (s.checkpoint / "config.json").exists():
            create = ProcessSpec("checkpoint", _python("policy_server.cli.model", "init", "--config", s.create,
                                                       "--out", str(s.checkpoint)), env=unbuffered)
        device = ["--device", s.device] if s.device else []
        key = ["--auth-key-file", str(s.auth_key_file)] if s.auth_key_file else []
        server = ProcessSpec("server", _python("policy_server.cli.serve", "--ckpt", str(s.checkpoint), "--bind",
                                               s.address, *device, *key), env=unbuffered)
    if cfg.estop.console:
        # In the terminal the console draws its panel and logs its events to the file itself; without one,
        # its event lines are its output, which goes to the same log.
        own = ["--log-file", str(logs / "estop.log")] if interactive else ["--no-keys"]
        estop = ProcessSpec("estop", _python("robot.estop.console", "--endpoint", cfg.estop.endpoint,
                                             "--status-endpoint", cfg.estop.status_endpoint, *own),
                            foreground=interactive)
    sim = ["--sim"] if cfg.robot.kind == "sim" else []
    runner = ProcessSpec("runner", _python("robot.cli", "run", task, *sim, "--server", s.address, "--episodes",
                                           str(episodes), "--launch", str(launch_file)),
                         env={**unbuffered, "COLUMNS": str(shutil.get_terminal_size().columns)})
    return Plan(create, server, estop, runner)


class Supervisor:
    """Starts a `Plan`, watches it, and tears it down in order."""

    def __init__(self, cfg: LaunchConfig) -> None:
        self.cfg = cfg
        self.procs: dict[str, Supervised] = {}
        self._signals = 0
        self._mirror: Supervised | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            console.print(f"[yellow]dv-launch: {signal.Signals(signum).name}: stopping (again to force)[/yellow]")

    @property
    def stopping(self) -> bool:
        return self._signals > 0

    def _forced(self) -> bool:
        return self._signals > 1

    def _start(self, spec: ProcessSpec) -> Supervised:
        proc = Supervised(spec, self.cfg.processes.logs_dir)
        self.procs[spec.name] = proc
        where = "this terminal" if spec.foreground else str(proc.log_path)
        console.print(f"dv-launch: started {spec.name} (pid {proc.pid}) → {where}")
        return proc

    def _run_to_end(self, spec: ProcessSpec) -> int:
        """A one-shot step (checkpoint creation); interruptible."""
        proc = self._start(spec)
        while (code := proc.poll()) is None:
            if self.stopping:
                return proc.stop(self.cfg.processes.interrupt_timeout_s, self.cfg.processes.terminate_timeout_s,
                                 self._forced)
            time.sleep(_POLL_S)
        return code

    def _wait_ready(self, proc: Supervised, timeout_s: float) -> bool:
        """True once the process printed a line starting with READY; False if it exited, timed out or we stop."""
        deadline, seen = time.monotonic() + timeout_s, b""
        while time.monotonic() < deadline and not self.stopping:
            seen += proc.new_output()
            if any(line.startswith(b"READY ") for line in seen.split(b"\n")):
                return True
            if proc.poll() is not None:
                return False
            time.sleep(_POLL_S)
        return False

    def _server_unavailable(self, server: Supervised) -> int:
        """The policy server it started never got ready: its log's last lines, then one line naming it (exit 2)."""
        self._fail(server, "did not become ready")
        code = server.poll()
        why = (f"exited with code {code}" if code is not None
               else f"printed no READY line within {self.cfg.server.ready_timeout_s:g} s")
        console.print(Text.assemble(("error: ", "red"), f"policy server (dv-serve on {self.cfg.server.address}) {why}; "
                                    f"check its log {server.log_path} (last lines above), server.checkpoint and "
                                    "server.device"), soft_wrap=True)
        return 2

    def _fail(self, proc: Supervised, what: str) -> None:
        console.print(f"[red]dv-launch: {proc.name} {what}; last lines of {proc.log_path}:[/red]")
        lines = proc.log_path.read_text(errors="replace").splitlines()[-15:]
        console.print("\n".join(lines), markup=False, highlight=False)

    def run(self, p: Plan) -> int:
        """Start everything, wait for the end, tear down; the runner's exit code."""
        try:
            if p.create_checkpoint is not None and self._run_to_end(p.create_checkpoint) != 0:
                self._fail(self.procs["checkpoint"], "could not create the checkpoint")
                return 1
            if p.server is not None and not self.stopping:
                server = self._start(p.server)
                if not self._wait_ready(server, self.cfg.server.ready_timeout_s):
                    if self.stopping:
                        return 1
                    return self._server_unavailable(server)
            if p.estop is not None and not self.stopping:
                self._start(p.estop)
            if self.stopping:
                return 1
            runner = self._start(p.runner)
            self._mirror = None if p.estop is not None and p.estop.foreground else runner
            return self._watch(runner)
        finally:
            self._teardown()

    def _watch(self, runner: Supervised) -> int:
        while not self.stopping:
            self._pump()
            if runner.poll() is not None:
                self._pump()
                if runner.proc.returncode != 0 and self._mirror is None:  # its error line went to the log only
                    self._fail(runner, f"exited with code {runner.proc.returncode}")
                return _shell_code(runner.proc.returncode)
            for proc in self.procs.values():
                code = proc.poll()
                if proc is runner or proc.name == "checkpoint" or code is None:
                    continue
                if code == 0:  # e.g. the operator quit the e-stop console
                    console.print(f"dv-launch: {proc.name} exited; stopping the run")
                else:
                    self._fail(proc, f"exited with code {code}")
                return self._stop_runner(runner)
            time.sleep(_POLL_S)
        return self._stop_runner(runner)

    def _stop_runner(self, runner: Supervised) -> int:
        code = runner.stop(self.cfg.processes.interrupt_timeout_s, self.cfg.processes.terminate_timeout_s,
                           self._forced)
        self._pump()
        return _shell_code(code)

    def _pump(self) -> None:
        """Mirror the runner's new output to this terminal (when the console does not own it)."""
        if self._mirror is not None:
            data = self._mirror.new_output()
            if data:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()

    def _teardown(self) -> None:
        timeouts = (self.cfg.processes.interrupt_timeout_s, self.cfg.processes.terminate_timeout_s)
        for name in ("runner", "estop", "server", "checkpoint"):
            proc = self.procs.get(name)
            if proc is not None:
                code = proc.stop(*timeouts, self._forced)
                console.print(f"dv-launch: {name} exited with code {code} (log: {proc.log_path})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dv-launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("launch_file", type=Path, help="a launch YAML, or the name of a packaged one ("
                   f"{', '.join(packaged_launch_files())}); e.g. launch/sim.yaml or sim")
    p.add_argument("--task", help="one of the file's tasks (default: its first)")
    p.add_argument("--episodes", type=int, help="default: the file's `episodes`")
    p.add_argument("--dry-run", action="store_true", help="validate the file, print the commands, start nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_launch_config(args.launch_file)
    except LaunchConfigError as exc:
        console.print(str(exc), markup=False, highlight=False)
        return 2
    task = args.task or cfg.tasks[0]
    if task not in cfg.tasks:
        parser.error(f"--task {task!r} is not in {args.launch_file}'s tasks {cfg.tasks}")
    if args.episodes is not None and args.episodes < 1:
        parser.error("--episodes must be >= 1")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    # The runner reads the very file this process validated, wherever the name resolved (a packaged file, say).
    p = plan(cfg, resolve_launch_file(args.launch_file), task, args.episodes or cfg.episodes, interactive)
    if args.dry_run:
        announce_overrides(console, cfg.overrides)
        for spec in (p.create_checkpoint, p.server, p.estop, p.runner):
            if spec is not None:
                console.print(f"{spec.name}: {' '.join(spec.argv)}", markup=False, highlight=False)
        return 0
    if cfg.estop.console and cfg.estop_required and not interactive:
        console.print(f"dv-launch: {args.launch_file}: estop: the required e-stop console needs a terminal (a "
                      "console without keys would keep the robot enabled with nobody able to stop it); run "
                      "dv-launch in a terminal, or set estop.console: false and run dv-estop yourself",
                      markup=False, highlight=False)
        return 2
    announce_overrides(console, cfg.overrides)
    try:
        return supervise(cfg, p)
    finally:
        announce_overrides(console, cfg.overrides)


def supervise(cfg: LaunchConfig, p: Plan) -> int:
    """Run `p` in this (main) thread with the signal handling described above; the runner's exit code."""
    saved_tty = termios.tcgetattr(sys.stdin.fileno()) if sys.stdin.isatty() else None
    supervisor = Supervisor(cfg)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, supervisor.request_stop)
    try:
        return supervisor.run(p)
    finally:
        if saved_tty is not None:  # a console killed mid-draw must not leave the terminal in cbreak mode
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved_tty)


if __name__ == "__main__":
    sys.exit(main())
