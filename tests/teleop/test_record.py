"""The recorder without a sim: what a row holds, keep/discard, the bounded queue and the degraded flag, out of
disk space, kill -9 at random moments of recording, and the operator devices (keyboard, SpaceMouse)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import ticks

from robot.execution import compose
from robot.geometry import make_T
from robot.policy import Observation
from teleop.dataset import DatasetWriter
from teleop.dataset import writer as W
from teleop.dataset.verify import verify
from teleop.devices.command import TeleopCommand, TeleopPolicy, advance
from teleop.devices.keyboard import KeyboardConfig, KeyboardSource
from teleop.devices.spacemouse import SpaceMouseConfig, SpaceMouseSource
from teleop.recorder import Recorder
from teleop.rows import dataset_config

HERE = Path(__file__).resolve().parent


def _writer(root: Path) -> DatasetWriter:
    return DatasetWriter(root, dataset_config(ticks.CAMERAS, 15, {"robot": "synthetic"}))


def _record(recorder: Recorder, episode: int, n: int, outcome: str = "success") -> None:
    recorder.begin(episode, "open the drawer")
    for i in range(n):
        recorder.record(ticks.tick(i))
    recorder.end(ticks.episode_record(episode, outcome))


def _rows(root: Path, episode: int) -> pq.Table:
    return pq.read_table(root / f"data/chunk-000/file-{episode:03d}.parquet")


def test_a_kept_episode_holds_every_stream_of_every_tick(tmp_path):
    with _writer(tmp_path) as writer:
        _record(Recorder(writer, list(ticks.CAMERAS), lambda r, p: True), 1, 10)
    assert verify(tmp_path).ok
    rows = _rows(tmp_path, 0)
    assert rows.num_rows == 10
    state = np.array(rows.column("observation.state").to_pylist())
    np.testing.assert_allclose(state[:, 0], 0.3 + 0.001 * np.arange(10), atol=1e-6)
    np.testing.assert_allclose(np.array(rows.column("action").to_pylist())[:, 0], 0.001, atol=1e-7)
    target = np.array(rows.column("action.target").to_pylist())
    np.testing.assert_allclose(target[:, 0], state[:, 0] + 0.001, atol=1e-6)  # target = state composed with action
    capture = np.array(rows.column("observation.capture_s").to_pylist())  # tick, state, gripper, static, wrist
    np.testing.assert_allclose(capture[:, 0], np.arange(10) * ticks.DT_NS / 1e9, atol=1e-6)
    np.testing.assert_allclose(capture[:, 1] - capture[:, 0], 1e-4, atol=1e-6)
    np.testing.assert_allclose(capture[:, 3] - capture[:, 0], -5e-3, atol=1e-6)
    assert np.array(rows.column("observation.camera_frame_number").to_pylist())[:, 1].tolist() == list(range(10))
    assert rows.column("timestamp").to_pylist() == pytest.approx([i / 15 for i in range(10)])  # video keys on this
    depth = cv2.imread(str(tmp_path / "depth/observation.depth.wrist/chunk-000/file-000/000007.png"),
                       cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and (depth == 507).all()  # lossless millimetres


def test_discarded_and_aborted_episodes_leave_nothing(tmp_path):
    with _writer(tmp_path) as writer:
        recorder = Recorder(writer, list(ticks.CAMERAS), lambda r, p: r.success)
        _record(recorder, 1, 5, outcome="failure")
        _record(recorder, 2, 5, outcome="success")
        assert [p.kept for p in recorder.history] == [False, True]
        assert recorder.history[1].dataset_index == 0
    assert json.loads((tmp_path / "meta/info.json").read_text())["total_episodes"] == 1
    assert not any((tmp_path / ".dv/staging").iterdir())


class _SlowEpisodes:
    """Makes every add_frame take `delay_s`: the disk or encoder falling behind."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
        original = W.EpisodeWriter.add_frame

        def slow(self, *args, **kwargs):
            time.sleep(delay_s)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(W.EpisodeWriter, "add_frame", slow)


def test_a_full_queue_drops_and_flags_the_episode_without_blocking_the_loop(tmp_path, monkeypatch):
    _SlowEpisodes(monkeypatch, 0.02)
    with _writer(tmp_path) as writer:
        recorder = Recorder(writer, list(ticks.CAMERAS), lambda r, p: True, queue_size=3)
        recorder.begin(1, "open the drawer")
        worst = 0.0
        for i in range(40):
            t = time.perf_counter()
            recorder.record(ticks.tick(i))
            worst = max(worst, time.perf_counter() - t)
        recorder.end(ticks.episode_record(1))
        p = recorder.history[0]
    assert worst < 0.005, f"record() blocked the loop for {worst * 1e3:.1f} ms"
    assert p.dropped > 0 and p.written + p.dropped == 40 and p.kept
    manifest = json.loads(next((tmp_path / ".dv/committed").iterdir()).joinpath("manifest.json").read_text())
    assert manifest["degraded"] is True and manifest["dropped_frames"] == p.dropped
    episodes = pq.read_table(tmp_path / "meta/episodes/chunk-000/file-000.parquet")
    assert episodes.column("dv/degraded").to_pylist() == [True]
    assert verify(tmp_path).ok


def test_a_tick_without_frames_counts_as_dropped(tmp_path):
    with _writer(tmp_path) as writer:
        recorder = Recorder(writer, list(ticks.CAMERAS), lambda r, p: True)
        recorder.begin(1, "open the drawer")
        for i in range(6):
            recorder.record(ticks.tick(i, with_frames=i != 3))
        recorder.end(ticks.episode_record(1))
    p = recorder.history[0]
    assert (p.written, p.dropped, p.degraded) == (5, 1, True)


def test_out_of_disk_space_aborts_the_episode_keeps_earlier_ones_and_stops_the_run(tmp_path, monkeypatch):
    failures: list[str] = []
    with _writer(tmp_path) as writer:
        recorder = Recorder(writer, list(ticks.CAMERAS), lambda r, p: True, on_failure=failures.append)
        _record(recorder, 1, 6)
        calls = {"n": 0}
        original = W.write_bytes

        def full_disk(path, data):
            calls["n"] += 1
            if calls["n"] > 4:
                raise OSError(errno.ENOSPC, "No space left on device")
            original(path, data)

        monkeypatch.setattr(W, "write_bytes", full_disk)
        _record(recorder, 2, 6)
    assert len(failures) == 1 and "out of disk space" in failures[0]
    assert [p.kept for p in recorder.history] == [True, False]
    report = verify(tmp_path)
    assert report.ok and json.loads((tmp_path / "meta/info.json").read_text())["total_episodes"] == 1
    assert _rows(tmp_path, 0).num_rows == 6


def test_kill_9_at_random_moments_of_recording_leaves_a_dataset_that_opens(tmp_path):
    """20 trials: the recorder process is killed at a random moment; the dataset reopens, verify passes, and every
    committed episode is complete (12 rows, pixels and states as recorded)."""
    rng = random.Random(5)
    root = tmp_path / "ds"
    committed_before = 0
    for trial in range(20):
        proc = subprocess.Popen([sys.executable, str(HERE / "record_forever.py"), str(root)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with _writer(root) as writer:  # reopening recovers: staging deleted, committed rolled forward
            n = writer.num_episodes
        report = verify(root)
        assert report.ok, f"trial {trial}: {report}"
        assert n >= committed_before
        committed_before = n
        for episode in range(n):
            state = np.array(_rows(root, episode).column("observation.state").to_pylist())
            np.testing.assert_allclose(state[:, 0], 0.3 + 0.001 * np.arange(12), atol=1e-6)
    assert committed_before > 0, "no trial got as far as committing an episode"


# ------------------------------------------------------------------------------------------- devices


def _observation(T: np.ndarray) -> Observation:
    return Observation(np.zeros(7, np.float32), {}, {"state": 0}, T, T)


class _Source:
    def __init__(self, command: TeleopCommand) -> None:
        self.cmd, self.started = command, 0

    def start(self) -> None:
        self.started += 1

    def command(self) -> TeleopCommand:
        return self.cmd

    def close(self) -> None:
        return None


def test_teleop_policy_integrates_the_operator_velocity_in_base_from_the_commanded_target():
    T = make_T(np.diag([1.0, -1.0, -1.0]), [0.4, 0.0, 0.3])  # pointing down, as the FR3 at home
    cmd = TeleopCommand(np.array([0.15, 0.0, -0.03]), np.array([0.0, 0.0, 0.3]), gripper_open=False)
    policy = TeleopPolicy(_Source(cmd), rate_hz=15, chunk_length=3)
    chunk = policy.infer(_observation(T))
    T_k = T
    for k, action in enumerate(chunk.actions):
        T_k = compose(T_k, action)
        np.testing.assert_allclose(T_k[:3, 3], T[:3, 3] + cmd.linear * (k + 1) / 15, atol=1e-9)  # base-frame motion
        assert action[6] == 0.0
    np.testing.assert_allclose(T_k, advance(advance(advance(T, cmd, 1 / 15), cmd, 1 / 15), cmd, 1 / 15), atol=1e-9)
    policy.source.cmd = TeleopCommand(end_episode=True)
    assert policy.infer(_observation(T)).done


class _Keys:
    def __init__(self) -> None:
        self.pending: list[str] = []
        self.closed = False

    def read(self, timeout_s: float) -> str | None:
        if self.pending:
            return self.pending.pop(0)
        time.sleep(timeout_s)
        return None

    def close(self) -> None:
        self.closed = True


def _until(cond, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_keyboard_keys_move_one_axis_for_a_moment_toggle_the_gripper_and_end_the_episode():
    keys = _Keys()
    source = KeyboardSource(keys, KeyboardConfig(speed_mps=0.05, turn_rps=0.3, hold_s=0.2))
    try:
        keys.pending += ["w", "j"]
        assert _until(lambda: source.command().angular[2] != 0)
        cmd = source.command()
        np.testing.assert_allclose(cmd.linear, [0.05, 0, 0])
        np.testing.assert_allclose(cmd.angular, [0, 0, 0.3])
        assert _until(lambda: not source.command().linear.any(), 1.0)  # released: stops within hold_s
        keys.pending += [" "]
        assert _until(lambda: not source.command().gripper_open)
        keys.pending += ["\r"]
        assert _until(lambda: source.command().end_episode)
        keys.pending += ["y"]
        assert source.answers.get(timeout=1.0) == "y"
        source.start()
        assert source.command().gripper_open and not source.command().end_episode
    finally:
        source.close()
    assert keys.closed


class _FakeMouse:
    def __init__(self) -> None:
        self.state = SimpleNamespace(x=0.0, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.0, buttons=[0, 0])
        self.fail = threading.Event()
        self.closed = False

    def read(self):
        if self.fail.is_set():
            raise OSError("device unplugged")
        return SimpleNamespace(**vars(self.state))

    def close(self) -> None:
        self.closed = True


def test_spacemouse_dead_zone_operator_frame_buttons_and_a_lost_device_stops_the_command():
    mouse = _FakeMouse()
    source = SpaceMouseSource(SpaceMouseConfig(speed_mps=0.1, turn_rps=0.5, deadzone=0.1, yaw_offset_deg=180,
                                               stale_s=0.1), open_device=lambda: mouse)
    try:
        mouse.state.x, mouse.state.yaw = 0.05, 1.0  # x inside the dead zone
        assert _until(lambda: source.command().angular[2] != 0)
        cmd = source.command()
        np.testing.assert_allclose(cmd.linear, 0.0, atol=1e-12)
        np.testing.assert_allclose(cmd.angular, [0, 0, 0.5], atol=1e-12)  # yaw is unchanged by a turn about z
        mouse.state.x, mouse.state.yaw = 1.0, 0.0  # full forward, operator facing the robot: base -x
        assert _until(lambda: source.command().linear[0] < 0)
        np.testing.assert_allclose(source.command().linear, [-0.1, 0, 0], atol=1e-12)
        mouse.state.buttons = [1, 0]
        assert _until(lambda: not source.command().gripper_open)
        mouse.state.buttons = [0, 0]
        time.sleep(0.05)
        assert not source.command().gripper_open  # one press, one toggle
        mouse.state.buttons = [0, 1]
        assert _until(lambda: source.command().end_episode)
        mouse.fail.set()  # unplugged while pushed forward: the command must fall to zero, not stay at 0.1 m/s
        assert _until(lambda: not source.command().linear.any(), 1.0)
        assert source.error is not None and "unplugged" in source.error
    finally:
        source.close()
    assert mouse.closed


# ------------------------------------------------------------------------------------------- hand-guiding


class _GuidedArm:
    """A hand-guided arm: each read returns the next pose of a path (x grows 5 mm per read; read 6 jumps 60 mm,
    a push faster than the envelope allows)."""

    def __init__(self) -> None:
        self.reads = 0

    def read_state(self):
        x = 0.35 + 0.005 * self.reads + (0.06 if self.reads >= 6 else 0.0)
        T = make_T(np.diag([1.0, -1.0, -1.0]), [x, 0.0, 0.4])
        self.reads += 1
        return ticks.arm_state(T, time.monotonic_ns())


class _Gripper:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.state = ticks.tick(0).gripper

    def open(self) -> bool:
        self.calls.append("open")
        return True

    def close(self) -> bool:
        self.calls.append("close")
        return True


class _Camera:
    def __init__(self, name: str) -> None:
        self.name, self.n = name, 0

    def read_latest(self):
        self.n += 1
        return ticks.tick(self.n).frames[self.name]


class _Script:
    """Keys of an operator: the gripper closes at tick 3, the episode ends at tick 8 (0-based)."""

    def __init__(self) -> None:
        self.calls = 0

    def start(self) -> None:
        self.calls = 0

    def command(self) -> TeleopCommand:
        self.calls += 1
        return TeleopCommand(gripper_open=self.calls < 4, end_episode=self.calls >= 9)

    def close(self) -> None:
        return None


class _Collect:
    def __init__(self) -> None:
        self.ticks, self.ended = [], []

    def begin(self, episode, instruction) -> None: ...

    def record(self, tick) -> None:
        self.ticks.append(tick)

    def end(self, record) -> None:
        self.ended.append(record)


def test_guiding_records_the_measured_motion_as_actions_and_the_envelope_judges_it():
    from robot.safety import SafetyConfig
    from teleop.guiding import GuidedRecording

    sink, gripper = _Collect(), _Gripper()
    guided = GuidedRecording(_GuidedArm(), gripper, {n: _Camera(n) for n in ticks.CAMERAS}, _Script(), sink,
                             SafetyConfig(), rate_hz=30.0)  # step cap 0.25 m/s / 30 Hz = 8.3 mm
    record = guided.run_episode(1, "open the drawer", max_s=5.0)
    assert record.outcome == "done" and len(sink.ticks) == 8  # 9 ticks; the last has no next pose, so no row
    for tick in sink.ticks:  # action t = the motion from pose t to pose t+1, in the action convention
        np.testing.assert_allclose(compose(tick.arm.T_base_ee, tick.action)[:3, 3], tick.target[:3, 3], atol=1e-9)
    steps = [t.action[0] for t in sink.ticks]
    assert steps[:5] == pytest.approx([0.005] * 5) and steps[5] == pytest.approx(0.065)
    assert [t.action[6] for t in sink.ticks] == [1, 1, 1, 0, 0, 0, 0, 0]  # the key closes it at tick 3
    assert [t.state[6] for t in sink.ticks][:5] == [1, 1, 1, 1, 0]  # the state shows it from the next tick
    assert gripper.calls == ["open", "close"]
    assert record.interventions.get("step_translation") == 1  # the 65 mm push would have been clamped
    guided.request_stop("test")
    assert guided.run_episode(2, "again", max_s=5.0).outcome == "aborted:interrupted"


def test_a_bug_in_the_writer_thread_discards_the_episode_instead_of_hanging(tmp_path, monkeypatch):
    """D4: an unexpected exception while writing (here: a row that cannot be built) must not kill the writer
    thread silently, or `end` would wait on a full queue forever: the episode is discarded and the run told."""
    import teleop.recorder as R

    def broken(*args, **kwargs):
        raise KeyError("observation.joints")

    monkeypatch.setattr(R, "tick_row", broken)
    failures: list[str] = []
    with _writer(tmp_path) as writer:
        recorder = Recorder(writer, list(ticks.CAMERAS), lambda r, p: True, queue_size=2, on_failure=failures.append)
        done = threading.Event()
        thread = threading.Thread(target=lambda: (_record(recorder, 1, 20), done.set()), daemon=True)
        thread.start()
        assert done.wait(10.0), "the recorder hung"
    assert failures and "KeyError" in failures[0]
    assert recorder.history[0].kept is False
    assert json.loads((tmp_path / "meta/info.json").read_text())["total_episodes"] == 0


def test_a_writer_that_never_finishes_is_abandoned_within_the_bound(tmp_path, monkeypatch):
    """`Recorder.end` runs on the loop's thread and used to join the writer with no bound: a writer stuck on a
    stalled disk hung the run. Now `end` returns within `writer_timeout_s`, the episode is discarded and flagged,
    the run is told, the committed episode before it is intact, and once the writer returns it deletes its own
    staging area, so the dataset stays consistent and the next session records again."""
    failures: list[str] = []
    stalled, entered = threading.Event(), threading.Event()
    original = W.EpisodeWriter.add_frame

    def stalls_on_frame_3(self, *args, **kwargs):
        if self.length == 3:
            entered.set()
            stalled.wait(30.0)  # a disk that stopped answering
        return original(self, *args, **kwargs)

    with _writer(tmp_path) as writer:
        recorder = Recorder(writer, list(ticks.CAMERAS), lambda r, p: True, queue_size=8, on_failure=failures.append,
                            writer_timeout_s=0.5)
        _record(recorder, 1, 5)  # a good episode first
        monkeypatch.setattr(W.EpisodeWriter, "add_frame", stalls_on_frame_3)
        recorder.begin(2, "open the drawer")
        for i in range(8):
            recorder.record(ticks.tick(i))
        assert entered.wait(10.0)
        t0 = time.monotonic()
        recorder.end(ticks.episode_record(2))
        waited = time.monotonic() - t0
        good, stuck = recorder.history
        assert 0.45 < waited < 1.5, f"end waited {waited:.2f} s for a writer bounded at 0.5 s"
        assert good.kept and stuck.kept is False and stuck.writer_timed_out and stuck.dataset_index is None
        assert len(failures) == 1 and "did not finish within 0.5 s" in failures[0]
        assert verify(tmp_path).ok and json.loads((tmp_path / "meta/info.json").read_text())["total_episodes"] == 1
        # a new episode while that writer is still stuck is refused, never mixed with it
        recorder.begin(3, "open the drawer")
        recorder.record(ticks.tick(0))
        recorder.end(ticks.episode_record(3))
        assert recorder.history[2].kept is False and "still stuck" in recorder.history[2].error
        stalled.set()  # the disk answers again: the abandoned writer discards its episode itself
        deadline = time.monotonic() + 10
        while any((tmp_path / ".dv/staging").iterdir()):
            assert time.monotonic() < deadline, "the abandoned writer left its staging area"
            time.sleep(0.02)
        monkeypatch.setattr(W.EpisodeWriter, "add_frame", original)
        _record(recorder, 4, 5)
        assert recorder.history[3].kept and recorder.history[3].dataset_index == 1
    assert len(failures) == 2  # the refused episode 3; the abandoned writer's own late events stop nothing
    assert verify(tmp_path).ok
    assert [_rows(tmp_path, i).num_rows for i in (0, 1)] == [5, 5]


def test_too_little_free_space_refuses_the_episode_before_it_starts(tmp_path):
    """D3 pre-flight: an episode starts only with room for two of the longest allowed; otherwise the run is
    stopped with the reason, before anything moves."""
    from teleop.cli import episode_bytes

    cameras = {n: SimpleNamespace(config=SimpleNamespace(width=640, height=480, depth=True)) for n in ("a", "b")}
    assert episode_bytes(cameras, 15, 300.0) == int(2 * 640 * 480 * 0.7 * 15 * 300)  # 1.9 GB for a person's 5 min
    failures: list[str] = []
    cfg = dataset_config(ticks.CAMERAS, 15, {"robot": "synthetic"})
    with DatasetWriter(tmp_path, cfg, min_free_bytes=1 << 60) as writer:
        recorder = Recorder(writer, list(ticks.CAMERAS), lambda r, p: True, on_failure=failures.append)
        _record(recorder, 1, 3)
    assert failures and "bytes free" in failures[0] and recorder.history[0].kept is False


def test_teleop_never_imports_torch():
    """DESIGN.md: the recorder runs on the robot PC, whose install (`.[robot]`) has no torch."""
    code = ("import sys; import teleop.cli, teleop.guiding, teleop.replay, bench.recorder, teleop.devices.keyboard, "
            "teleop.devices.spacemouse, teleop.devices.sim_hand; assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE.parents[1], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    assert out.returncode == 0, out.stderr


class _Console:
    """An e-stop as the guiding loop sees it: `script` lists the modes of successive checks (the last repeats)."""

    def __init__(self, *script: str) -> None:
        from robot.estop import EStopMode

        self.modes = [EStopMode(m) for m in script]

    def check(self, now_ns: int | None = None):
        from robot.estop import EStopState, StopReason

        mode = self.modes.pop(0) if len(self.modes) > 1 else self.modes[0]
        return EStopState(mode, StopReason.STOP_COMMAND if mode == "STOPPED" else None)

    def begin_motion(self, now_ns: int | None = None):
        return self.check(now_ns)


def test_guiding_waits_for_the_e_stop_and_a_stop_ends_the_episode():
    from robot.safety import SafetyConfig
    from teleop.guiding import EStopRefused, GuidedRecording

    class _Home:
        def reset(self, episode: int) -> str:
            return "open the drawer"

    def guided(console: _Console) -> GuidedRecording:
        return GuidedRecording(_GuidedArm(), _Gripper(), {n: _Camera(n) for n in ticks.CAMERAS}, _Script(), _Collect(),
                               SafetyConfig(), rate_hz=30.0, estop=console)

    with pytest.raises(EStopRefused, match="WAITING"):  # no console ever heard: nothing starts
        guided(_Console("WAITING")).run(1, _Home(), max_s=5.0, estop_wait_s=0.2)
    records = guided(_Console("ARMED", "RUN", "RUN", "RUN", "RUN", "STOPPED")).run(2, _Home(), max_s=5.0)
    assert len(records) == 1 and records[0].outcome == "aborted:estop"
