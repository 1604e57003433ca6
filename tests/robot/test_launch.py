"""Launch files and `dv-launch`: every bad config fails at load naming the file and the field; the supervisor
starts server → console → runner, returns the runner's exit code, and tears everything down on Ctrl-C with no
orphans. §7 "bad launch config → clear error"; the e-stop rows it touches are named per test.

The supervisor runs in a child process (so that it can be signalled) from a small driver that feeds it a plan:
the real `dv-serve --echo` and the real `dv-estop` console, and stand-in runners where a test needs a runner
that misbehaves on purpose.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from robot.launch import DEFAULT_LAUNCH_FILE, LaunchConfigError, load_launch_config, parse_launch_config
from robot.launch.supervisor import plan

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "launch" / "sim.yaml"
REAL = REPO / "launch" / "real_fr3.yaml"
PY = sys.executable


# ------------------------------------------------------------------------------------------------ the files


def test_shipped_launch_files_load():
    sim, real = load_launch_config(SIM), load_launch_config(REAL)
    assert DEFAULT_LAUNCH_FILE == SIM
    assert sim.robot.kind == "sim" and not sim.estop_required  # optional in sim
    assert real.robot.kind == "real" and real.estop_required  # required for a real robot
    assert {c.name: c.type for c in real.cameras} == {"static": "realsense", "wrist": "realsense"}
    assert real.camera("wrist").serial  # placeholders the user edits
    assert not real.calibration.T_ee_cam_wrist.calibrated  # empty until dv-calib writes it
    assert sim.tasks[0] == "pick_bottle" and sim.runner.rate_hz == 15


def _sim_data() -> dict[str, Any]:
    return yaml.safe_load(SIM.read_text())


def _set(path: str, value: Any):
    def apply(d: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            d = d[int(key)] if key.isdigit() else d.setdefault(key, {})
        if isinstance(d, list):
            d[int(leaf)] = value
        else:
            d[leaf] = value
    return apply


def _drop_wrist(d: dict[str, Any]) -> None:
    d["cameras"] = [c for c in d["cameras"] if c["name"] != "wrist"]


BAD = {
    "unknown top-level field": (_set("cameras_extra", 1), "cameras_extra: Extra inputs are not permitted"),
    "unknown nested field": (_set("safety.max_sped_mps", 0.2), "safety.max_sped_mps: Extra inputs are not permitted"),
    "wrong type": (_set("runner.rate_hz", "fast"), "runner.rate_hz: Input should be a valid number"),
    "negative limit": (_set("safety.max_speed_mps", -0.25), "safety.max_speed_mps: Input should be greater than 0"),
    "limit above the ceiling": (_set("robot.arm.relative_dynamics_factor", 1.5),
                                "robot.arm.relative_dynamics_factor: Input should be less than or equal to 1"),
    # A2: a non-unit quaternion
    "bad quaternion norm": (_set("calibration.T_ee_cam_wrist", {"xyz": [0, 0, 0.05], "quat_xyzw": [0, 0, 0, 0.9]}),
                            "calibration.T_ee_cam_wrist.quat_xyzw: quaternion norm is 0.9000"),
    "half a calibration": (_set("calibration.T_base_cam_static", {"xyz": [1, 0, 0.5]}),
                           "calibration.T_base_cam_static: set both xyz and quat_xyzw"),
    "missing camera role": (_drop_wrist, "cameras: need exactly one camera per role ['static', 'wrist']"),
    "repeated camera role": (_set("cameras.1.name", "static"),
                             "cameras: need exactly one camera per role ['static', 'wrist']"),
    "real camera on a sim robot": (_set("cameras.1", {"type": "realsense", "name": "wrist", "serial": "1"}),
                                   "cameras: camera(s) ['wrist'] do not match robot.kind 'sim'"),
    "unknown camera type": (_set("cameras.0.type", "gopro"), "cameras[0]: unknown camera type 'gopro'"),
    "bad camera field": (_set("cameras.0.width", 0), "cameras[0].width: Input should be greater than 0"),
    "unknown task": (_set("tasks", ["pick_bottle", "juggle"]), "tasks: unknown task(s) ['juggle']"),
    # A3's configuration side: an empty workspace box
    "inverted workspace": (_set("safety.workspace", {"lo": [0.8, -0.4, 0.0], "hi": [0.3, 0.4, 0.6]}),
                           "safety.workspace: workspace box needs lo < hi"),
    "heartbeat timeout 0": (_set("estop.timeout_s", 0), "estop.timeout_s: Input should be greater than 0"),
    "server on the network": (_set("server.address", "tcp://0.0.0.0:5555"),
                              "server: dv-launch starts dv-serve on loopback only"),
    "missing section": (lambda d: d.pop("robot"), "robot: Field required"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_launch_config_names_file_and_field(case, tmp_path):
    """§7: each bad value fails at load with `<file>: <field>: <problem>`."""
    mutate, expected = BAD[case]
    data = copy.deepcopy(_sim_data())
    mutate(data)
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LaunchConfigError) as info:
        load_launch_config(path)
    assert f"{path}: {expected}" in str(info.value), str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("robot: {kind: sim}\nrobot: {kind: real}\n", "line 2: YAML error: duplicate key 'robot'"),
    ("robot:\n  kind: [sim\n", "line 3: YAML error: expected ',' or ']'"),
    ("- robot\n- cameras\n", "the file must be a mapping of sections"),
])
def test_bad_yaml_is_a_clear_error(text, expected, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LaunchConfigError) as info:
        load_launch_config(path)
    assert f"{path}: {expected}" in str(info.value)
    with pytest.raises(LaunchConfigError, match="missing.yaml: cannot read"):
        load_launch_config(tmp_path / "missing.yaml")


def test_dv_launch_rejects_a_bad_file_with_exit_2(tmp_path):
    data = _sim_data()
    data["safety"] = {"max_speed_mps": 0}
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run([PY, "-m", "robot.launch.supervisor", str(path)], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 2
    assert f"{path}: safety.max_speed_mps: Input should be greater than 0" in out.stderr


# ------------------------------------------------------------------------------------------------ the plan


def test_plan_for_sim_and_real(tmp_path):
    data = _sim_data()
    data["server"]["checkpoint"] = str(tmp_path / "tiny")  # does not exist: created first
    sim = parse_launch_config(data, "sim.yaml")
    p = plan(sim, Path("sim.yaml"), "drawer_open", 2, interactive=False)
    assert p.create_checkpoint.argv[-5:] == ["init", "--config", "tiny", "--out", str(tmp_path / "tiny")]
    assert p.server.argv[2:] == ["policy_server.cli.serve", "--ckpt", str(tmp_path / "tiny"), "--bind",
                                 "tcp://127.0.0.1:5555", "--device", "cpu"]
    assert p.estop is None  # sim.yaml: no console unless asked
    assert p.runner.argv[2:] == ["robot.cli", "run", "drawer_open", "--sim", "--server", "tcp://127.0.0.1:5555",
                                 "--episodes", "2", "--launch", "sim.yaml"]
    real = load_launch_config(REAL)
    p = plan(real, REAL, "pick_doll", 1, interactive=True)
    assert p.estop.foreground and "--no-keys" not in p.estop.argv
    assert "--sim" not in p.runner.argv


# ------------------------------------------------------------------------------------------------ overrides


def _real_data() -> dict[str, Any]:
    return yaml.safe_load(REAL.read_text())


def test_a_real_robot_without_estop_is_refused_unless_overridden():
    """A real robot with `estop.required: false` moved with no software e-stop; now the file fails at load naming
    the field, and only `estop.allow_real_robot_without_estop: true` lets it through (listed as an override)."""
    data = _real_data()
    data["estop"]["required"] = False
    with pytest.raises(LaunchConfigError, match=r"real.yaml: estop: required: false on a real robot .* set "
                       r"allow_real_robot_without_estop: true"):
        parse_launch_config(data, "real.yaml")
    data["estop"]["allow_real_robot_without_estop"] = True
    cfg = parse_launch_config(data, "real.yaml")
    assert not cfg.estop_required and cfg.without_estop
    assert cfg.overrides == ["OVERRIDE estop.allow_real_robot_without_estop: the real robot moves with no software "
                             "e-stop"]
    # console: false alone keeps the e-stop required (dv-estop run elsewhere): no override, nothing to refuse
    data = _real_data()
    data["estop"]["console"] = False
    cfg = parse_launch_config(data, "real.yaml")
    assert cfg.estop_required and cfg.overrides == []
    # the sim needs no override, and an override on a robot that keeps its e-stop is not in force
    assert load_launch_config(SIM).overrides == []
    data["estop"]["allow_real_robot_without_estop"] = True
    assert parse_launch_config(data, "real.yaml").overrides == []


def test_a_remote_server_needs_a_key_file_or_the_override(tmp_path):
    """The client must refuse a non-loopback endpoint without a key unless explicitly overridden: the launch file
    refuses it at load; the key file's bytes, stripped of surrounding whitespace, are the key."""
    data = _sim_data()
    data["server"].update(address="tcp://10.0.0.7:5555", start=False)
    with pytest.raises(LaunchConfigError, match=r"server: address tcp://10.0.0.7:5555 is not loopback: set "
                       "auth_key_file"):
        parse_launch_config(data, "sim.yaml")
    data["server"]["auth_key_file"] = str(tmp_path / "missing.key")
    with pytest.raises(LaunchConfigError, match=r"server.auth_key_file: cannot read key file .*missing.key"):
        parse_launch_config(data, "sim.yaml")
    (tmp_path / "empty.key").write_text(" \n")
    data["server"]["auth_key_file"] = str(tmp_path / "empty.key")
    with pytest.raises(LaunchConfigError, match=r"server.auth_key_file: key file .*empty.key is empty"):
        parse_launch_config(data, "sim.yaml")
    (tmp_path / "short.key").write_text("0123456789\n")
    data["server"]["auth_key_file"] = str(tmp_path / "short.key")
    with pytest.raises(LaunchConfigError, match=r"server.auth_key_file: key file .*short.key holds 10 bytes; a key "
                       "needs at least 16"):
        parse_launch_config(data, "sim.yaml")
    (tmp_path / "good.key").write_bytes(b"  0123456789abcdef-secret\n")
    data["server"]["auth_key_file"] = str(tmp_path / "good.key")
    cfg = parse_launch_config(data, "sim.yaml")
    assert cfg.server.key() == b"0123456789abcdef-secret" and cfg.overrides == []
    del data["server"]["auth_key_file"]
    data["server"]["allow_unauthenticated_remote"] = True
    assert parse_launch_config(data, "sim.yaml").overrides == [
        "OVERRIDE allow_unauthenticated_remote: the policy server at tcp://10.0.0.7:5555 is reached over the network "
        "without a key"]


def test_a_started_server_gets_the_key_file(tmp_path):
    data = _sim_data()
    (tmp_path / "k").write_text("0123456789abcdef")
    data["server"].update(auth_key_file=str(tmp_path / "k"), checkpoint=str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    p = plan(parse_launch_config(data, "sim.yaml"), Path("sim.yaml"), "pick_bottle", 1, interactive=False)
    assert p.server.argv[-2:] == ["--auth-key-file", str(tmp_path / "k")]


def _run_args(**kw: Any) -> Any:
    from robot.cli import build_parser

    argv = ["run", "pick_bottle", "--sim", *[a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", *v)]]
    return build_parser().parse_args(argv)


def test_dv_robot_plumbs_the_key_and_the_override_to_the_remote_policy(tmp_path, monkeypatch):
    """`--server` off loopback: refused without --auth-key-file or --allow-unauthenticated-remote; with the key
    its stripped bytes reach the pre-flight hello and `RemotePolicy`; with the override, the keyword reaches both
    and the run records the override."""
    import contextlib

    import robot.cli as cli

    with pytest.raises(cli.UsageError, match=r"tcp://10.0.0.7:5555 is not on loopback: pass --auth-key-file"):
        cli.plan_run(_run_args(server=["tcp://10.0.0.7:5555"]))
    (tmp_path / "k").write_bytes(b"\t0123456789abcdef\n")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli, "check_server", lambda *a: seen.__setitem__("hello", a))
    monkeypatch.setattr(cli, "RemotePolicy", lambda endpoint, contract, **kw: seen.__setitem__("policy", kw))
    for extra, key, allow in (({"auth_key_file": [str(tmp_path / "k")]}, b"0123456789abcdef", False),
                              ({"allow_unauthenticated_remote": []}, None, True)):
        args = _run_args(server=["tcp://10.0.0.7:5555"], **extra)
        p = cli.plan_run(args)
        cell = SimpleNamespace(sim=None, camera_sizes=lambda: {"static": (48, 64), "wrist": (48, 64)})
        with contextlib.ExitStack() as stack:
            cli._policy(p, cell, stack)
        assert seen["hello"][2:4] == (key, allow)
        assert seen["policy"]["key"] == key
        assert seen["policy"]["allow_unauthenticated_remote"] is allow
        assert bool(p.overrides) is allow
    assert p.overrides == ("OVERRIDE allow_unauthenticated_remote: the policy server at tcp://10.0.0.7:5555 is "
                           "reached over the network without a key",)


def test_dv_launch_prints_the_override_in_red(tmp_path):
    data = _real_data()
    data["estop"].update(required=False, console=False, allow_real_robot_without_estop=True)
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run([PY, "-m", "robot.launch.supervisor", str(path), "--dry-run"], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "FORCE_COLOR": "1"},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "\x1b[1;31mOVERRIDE estop.allow_real_robot_without_estop: the real robot moves with no software " \
           "e-stop" in out.stderr


# ------------------------------------------------------------------------------------------ the supervisor

DRIVER = textwrap.dedent("""
    import json, sys
    from robot.launch.config import parse_launch_config
    from robot.launch.process import ProcessSpec
    from robot.launch.supervisor import Plan, supervise
    spec = json.loads(open(sys.argv[1]).read())
    cfg = parse_launch_config(spec["config"], "test.yaml")
    get = lambda name: ProcessSpec(**spec[name]) if spec.get(name) else None
    sys.exit(supervise(cfg, Plan(None, get("server"), get("estop"), get("runner"))))
""")

# Stand-ins. The runner writes its pid (and a grandchild's) so the test can check nothing outlives the launch.
RUNNER_EXITS_3 = ("import time; time.sleep(1.5); print('episode 1: success', flush=True); "
                  "print('SUMMARY TABLE', flush=True); raise SystemExit(3)")
RUNNER_WAITS = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    child = subprocess.Popen(['sleep', '300'])
    open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}')
    def bye(signum, frame):
        print(f'runner: SIGINT at {time.monotonic():.6f}', flush=True)
        raise SystemExit(0)
    signal.signal(signal.SIGINT, bye)
    print('runner: running', flush=True)
    while True:
        time.sleep(0.05)
""")
STUBBORN_SERVER = textwrap.dedent("""
    import os, signal, sys, time
    def note(signum, frame):
        print(f'server: {signal.Signals(signum).name} at {time.monotonic():.6f}', flush=True)
    signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)
    open(sys.argv[1], 'w').write(str(os.getpid()))
    print('READY tcp://127.0.0.1:1', flush=True)
    while True:
        time.sleep(0.05)
""")


def _config(tmp_path: Path) -> dict[str, Any]:
    data = _sim_data()
    data["processes"] = {"logs_dir": str(tmp_path / "logs"), "interrupt_timeout_s": 1.0, "terminate_timeout_s": 0.5}
    data["server"]["ready_timeout_s"] = 30
    return data


def _launch(tmp_path: Path, server: list[str] | None, runner: list[str], estop: bool = False) -> subprocess.Popen:
    spec: dict[str, Any] = {"config": _config(tmp_path), "runner": {"name": "runner", "argv": runner}}
    if server is not None:
        spec["server"] = {"name": "server", "argv": server}
    if estop:
        spec["estop"] = {"name": "estop", "argv": [PY, "-m", "robot.estop.console", "--no-keys", "--endpoint",
                                                   "tcp://127.0.0.1:9", "--status-endpoint", "tcp://127.0.0.1:9"]}
    (tmp_path / "plan.json").write_text(json.dumps(spec))
    (tmp_path / "driver.py").write_text(DRIVER)
    return subprocess.Popen([PY, str(tmp_path / "driver.py"), str(tmp_path / "plan.json")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_for(path: Path, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    time.sleep(0.05)
    return path.read_text()


def _stamp(log: str, prefix: str) -> float:
    """The monotonic time a stand-in printed after `prefix`."""
    return float(next(line for line in log.splitlines() if line.startswith(prefix)).removeprefix(prefix))


def test_supervisor_returns_the_runner_exit_code(tmp_path):
    """Real `dv-serve --echo` and real `dv-estop`: the runner starts after READY, its output reaches the
    terminal and its log, its exit code is dv-launch's, and the server and console are stopped after it."""
    server = [PY, "-m", "policy_server.cli.serve", "--echo", "--bind", "tcp://127.0.0.1:*", "--warmup-steps", "0"]
    proc = _launch(tmp_path, server, [PY, "-c", RUNNER_EXITS_3], estop=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "SUMMARY TABLE" in out  # mirrored
    logs = tmp_path / "logs"
    assert "READY tcp://127.0.0.1:" in (logs / "server.log").read_text()
    assert "SUMMARY TABLE" in (logs / "runner.log").read_text()
    assert "READY" in (logs / "estop.log").read_text()
    for name in ("runner", "estop", "server"):
        assert f"{name} exited with code" in err
    assert err.index("runner exited") < err.index("estop exited") < err.index("server exited")


def test_server_that_never_gets_ready_stops_the_launch(tmp_path):
    """The runner never starts against a server that died; the error shows the server's log, then one line naming
    the policy server and what to check, exit code 2."""
    marker = tmp_path / "runner-started"
    proc = _launch(tmp_path, [PY, "-c", "print('loading'); raise SystemExit('bad checkpoint')"],
                   [PY, "-c", f"open({str(marker)!r}, 'w')"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2  # a policy server that does not start is a failing device
    assert "server did not become ready" in err and "bad checkpoint" in err
    assert "error: policy server (dv-serve on tcp://127.0.0.1:5555) exited with code 1; check its log" in err
    assert not marker.exists() and not (tmp_path / "logs" / "runner.log").exists()


def test_ctrl_c_tears_down_in_order_with_no_orphans(tmp_path):
    """SIGINT to dv-launch: the runner gets SIGINT first and exits; its leftover grandchild is reaped; the
    server that ignores SIGINT and SIGTERM is SIGKILLed after the timeouts; nothing survives."""
    pids, server_pid = tmp_path / "runner.pids", tmp_path / "server.pid"
    proc = _launch(tmp_path, [PY, "-c", STUBBORN_SERVER, str(server_pid)], [PY, "-c", RUNNER_WAITS, str(pids)])
    runner, grandchild = map(int, _wait_for(pids).split())
    server = int(_wait_for(server_pid))
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, err  # the runner's own exit code after its clean SIGINT exit
    assert not any(_alive(pid) for pid in (runner, grandchild, server))
    assert "server exited with code -9" in err  # SIGINT and SIGTERM ignored → SIGKILL
    runner_log = (tmp_path / "logs" / "runner.log").read_text()
    server_log = (tmp_path / "logs" / "server.log").read_text()
    t_runner = _stamp(runner_log, "runner: SIGINT at ")
    t_server = _stamp(server_log, "server: SIGINT at ")
    assert t_runner < t_server  # runner first
    assert "SIGTERM at" in server_log
    assert elapsed < 1.0 + 0.5 + 0.5 + 3.0  # interrupt + terminate timeouts (+ group reaping), + slack


def test_killed_supervisor_leaves_no_orphans(tmp_path):
    """Even SIGKILL on dv-launch (no teardown possible) leaves none of its children: PR_SET_PDEATHSIG sends them
    SIGTERM. (What a child started itself is that child's to stop on SIGTERM.)"""
    pids = tmp_path / "runner.pids"
    server = [PY, "-m", "policy_server.cli.serve", "--echo", "--bind", "tcp://127.0.0.1:*", "--warmup-steps", "0"]
    proc = _launch(tmp_path, server, [PY, "-c", RUNNER_WAITS, str(pids)])
    runner, grandchild = map(int, _wait_for(pids).split())
    children = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert runner in children and len(children) == 2  # server and runner
    proc.kill()
    proc.communicate(timeout=10)
    os.kill(grandchild, signal.SIGKILL)  # the stand-in runner does not clean up after itself
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, "a child outlived its supervisor"
        time.sleep(0.05)


LISTENING_RUNNER = textwrap.dedent("""
    import signal, sys
    from robot.estop import EStopListener
    def bye(signum, frame):
        print('runner: interrupted', flush=True)
        raise SystemExit(0)
    signal.signal(signal.SIGINT, bye)
    listener, last, started = EStopListener(sys.argv[1]), None, False
    while True:
        state = listener.wait(0.01)
        if state.mode.value == 'ARMED' and not started:  # one start; after a RESUME it stays ARMED
            state, started = listener.begin_motion(), True
        if state.describe() != last:
            last = state.describe()
            print('runner estop:', last, flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a real terminal")
def test_console_in_the_launch_terminal_stops_the_runner(tmp_path):
    """E1 through dv-launch: the console owns the terminal (in its own session, so Ctrl-C reaches only the
    supervisor); SPACE latches the runner's listener, R Y arms it; Ctrl-C tears down and restores the terminal."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    spec = {
        "config": _config(tmp_path),
        "server": {"name": "server", "argv": [PY, "-c", "import time; print('READY x', flush=True); time.sleep(60)"]},
        "estop": {"name": "estop", "foreground": True,
                  "argv": [PY, "-m", "robot.estop.console", "--endpoint", endpoint, "--status-endpoint",
                           "tcp://127.0.0.1:9", "--log-file", str(tmp_path / "logs" / "estop.log")]},
        "runner": {"name": "runner", "argv": [PY, "-c", LISTENING_RUNNER, endpoint]},
    }
    (tmp_path / "plan.json").write_text(json.dumps(spec))
    (tmp_path / "driver.py").write_text(DRIVER)
    runner_log, done = tmp_path / "logs" / "runner.log", tmp_path / "done"
    session = f"launch-test-{os.getpid()}"
    cmd = (f"cd {REPO} && PYTHONPATH={REPO} {PY} {tmp_path / 'driver.py'} {tmp_path / 'plan.json'}; "
           f"echo exit=$? > {done}; stty -a >> {done}; sleep 10")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", cmd], check=True)

    def runner_says(text: str) -> None:
        deadline = time.monotonic() + 20
        while not (runner_log.exists() and f"runner estop: {text}" in runner_log.read_text()):
            assert time.monotonic() < deadline, runner_log.read_text() if runner_log.exists() else "no log"
            time.sleep(0.05)

    try:
        runner_says("RUN")
        subprocess.run(["tmux", "send-keys", "-t", session, "Space"], check=True)
        runner_says("STOPPED (stop_command)")
        subprocess.run(["tmux", "send-keys", "-t", session, "r", "y"], check=True)
        runner_says("ARMED")
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        report = _wait_for(done, 20)
        assert report.startswith("exit=0")  # the runner's code after its clean SIGINT exit
        assert " icanon " in f" {report} " and " echo " in f" {report} "  # terminal restored
        assert "runner: interrupted" in runner_log.read_text()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("torch", "mujoco", "franky_sim")),
                    reason="needs the server and sim extras")
def test_dv_launch_sim_yaml_end_to_end_ctrl_c(tmp_path):
    """The real processes from launch/sim.yaml (ports and logs moved, the e-stop console switched on): the tiny
    checkpoint's dv-serve, the headless dv-estop and `dv-robot run --sim`. Once the console reports the robot
    running, Ctrl-C: the runner stops the episode and prints its summary, dv-launch exits with the runner's
    code, and every child is gone (E1/E2 wiring: the console sees the runner's status)."""
    data = _sim_data()
    data["server"]["address"] = f"tcp://127.0.0.1:{_free_port()}"
    data["estop"].update(console=True, endpoint=f"tcp://127.0.0.1:{_free_port()}",
                         status_endpoint=f"tcp://127.0.0.1:{_free_port()}")
    data["processes"] = {"logs_dir": str(tmp_path / "logs"), "interrupt_timeout_s": 10, "terminate_timeout_s": 3}
    data["runner"]["max_episode_s"] = 30
    launch_file = tmp_path / "sim.yaml"
    launch_file.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([PY, "-m", "robot.launch.supervisor", str(launch_file), "--episodes", "1"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    estop_log = tmp_path / "logs" / "estop.log"
    deadline = time.monotonic() + 120
    while not (estop_log.exists() and "ROBOT RUN estop=RUN task=pick_bottle episode=1/1" in estop_log.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the robot never reported RUN to the console"
        time.sleep(0.1)
    children = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(children) == 3  # server, console, runner
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "pick_bottle" in out and "summary written to" in out  # the runner's tables, mirrored
    assert err.index("runner exited with code 0") < err.index("estop exited") < err.index("server exited")
    assert not any(_alive(pid) for pid in children)
