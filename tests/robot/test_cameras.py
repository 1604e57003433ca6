"""`RealSenseCamera` through librealsense itself, and the camera factory (matrix row: RealSense playback).

No camera is needed: the test builds an `rs.software_device` with D415-like streams (colour RGB8 and depth Z16,
640x480@30, intrinsics, depth unit 100 µm, identity depth->colour extrinsics), records it with `rs.recorder`
to a .db3, and the driver plays that file through `rs.pipeline` — the same pipeline, syncer, `rs.align` and
depth-scale code that runs against a device. Frame k carries its index in the red channel and
1000 + 10·k mm of depth, so content, pairing and units can be checked frame by frame; two time slots re-send
frame 11, as a glitching device would, to exercise duplicate detection.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from robot.cameras import CameraError, CameraTimeout, camera_config_from_dict, make_camera

rs = pytest.importorskip("pyrealsense2")
from robot.cameras.realsense import RealSenseCamera, RealSenseConfig  # noqa: E402  (needs pyrealsense2)

W, H, FPS = 640, 480, 30
N_FRAMES = 30
REPEATED, REPEATS_AT = 11, (12, 13)  # like a glitching device, slots 12 and 13 re-send frame 11 (new timestamps)
DEPTH_UNIT_M = 0.0001  # not the D415's default 1 mm, so the driver's depth-scale conversion is exercised
T0_MS = 1000.0


def expected_depth_mm(k: int) -> int:
    return 1000 + 10 * k


def number_at(slot: int) -> int:
    """The frame number (and content) the recording carries in time slot `slot`."""
    return REPEATED if slot in REPEATS_AT else slot


def slot_times_ms(number: int) -> list[float]:
    """Device timestamps of the slots that carry frame `number`."""
    return [T0_MS + i * 1000 / FPS for i in range(N_FRAMES) if number_at(i) == number]


def _intrinsics() -> rs.intrinsics:
    intr = rs.intrinsics()
    intr.width, intr.height, intr.ppx, intr.ppy, intr.fx, intr.fy = W, H, W / 2, H / 2, 615.0, 615.0
    intr.model, intr.coeffs = rs.distortion.brown_conrady, [0.0] * 5
    return intr


def _stream(kind: rs.stream, fmt: rs.format, bpp: int, uid: int) -> rs.video_stream:
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = kind, 0, uid, W, H, FPS, bpp, fmt
    vs.intrinsics = _intrinsics()
    return vs


def record_d415_like(path: Path) -> None:
    """Write N_FRAMES paced at FPS (the recorder keeps host arrival times, which playback reproduces)."""
    dev = rs.software_device()
    dev.register_info(rs.camera_info.name, "Intel RealSense D415 (software)")
    dev.register_info(rs.camera_info.serial_number, "000000000415")
    depth_sensor, color_sensor = dev.add_sensor("Stereo Module"), dev.add_sensor("RGB Camera")
    depth_profile = depth_sensor.add_video_stream(_stream(rs.stream.depth, rs.format.z16, 2, 0))
    color_profile = color_sensor.add_video_stream(_stream(rs.stream.color, rs.format.rgb8, 3, 1))
    depth_profile, color_profile = depth_profile.as_video_stream_profile(), color_profile.as_video_stream_profile()
    depth_sensor.add_read_only_option(rs.option.depth_units, DEPTH_UNIT_M)
    identity = rs.extrinsics()
    identity.rotation, identity.translation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], [0.0, 0.0, 0.0]
    depth_profile.register_extrinsics_to(color_profile, identity)

    recorder = rs.recorder(str(path), dev)
    sink = rs.frame_queue(2 * N_FRAMES)
    for sensor, profile in ((depth_sensor, depth_profile), (color_sensor, color_profile)):
        sensor.open(profile)
        sensor.start(sink)
    buffers = []  # librealsense reads the pixels after on_video_frame returns: keep them alive
    start = time.monotonic()
    for slot in range(N_FRAMES):
        k = number_at(slot)
        color = np.empty((H, W, 3), np.uint8)
        color[..., 0] = k
        color[..., 1] = np.arange(W, dtype=np.uint16) % 256
        color[..., 2] = (np.arange(H, dtype=np.uint16) % 256)[:, None]
        depth = np.full((H, W), round(expected_depth_mm(k) * 1e-3 / DEPTH_UNIT_M), np.uint16)
        buffers += [color, depth]
        time.sleep(max(0.0, start + slot / FPS - time.monotonic()))
        # Depth first, as a D415 often delivers it; a fresh software_video_frame each time (reuse corrupts).
        for sensor, profile, pixels in ((depth_sensor, depth_profile, depth), (color_sensor, color_profile, color)):
            frame = rs.software_video_frame()
            frame.pixels, frame.profile = pixels, profile
            frame.bpp = pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
            frame.stride = W * frame.bpp
            frame.timestamp, frame.frame_number = T0_MS + slot * 1000 / FPS, k
            frame.domain = rs.timestamp_domain.hardware_clock
            sensor.on_video_frame(frame)
    for sensor in (depth_sensor, color_sensor):
        sensor.stop()
        sensor.close()
    recorder.pause()
    del recorder  # flushes and closes the file


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("realsense") / "d415_like.db3"
    record_d415_like(path)
    return path


def playback(recording: Path, **kw: object) -> RealSenseCamera:
    camera = make_camera(RealSenseConfig(name="static", playback_file=recording, **kw))
    assert isinstance(camera, RealSenseCamera)
    return camera


def read_all(camera: RealSenseCamera, timeout_s: float = 0.2) -> list:
    frames = []
    while True:
        try:
            frames.append(camera.read(timeout_s))
        except CameraTimeout:
            return frames


def test_configs_are_validated_and_built_by_type(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        RealSenseConfig(name="x")
    with pytest.raises(ValidationError, match="exactly one"):
        RealSenseConfig(name="x", serial="1", playback_file=tmp_path / "a.db3")
    with pytest.raises(ValidationError, match="wait_timeout_ms"):
        RealSenseConfig(name="x", serial="1", wait_timeout_ms=500)  # must notice a stop within 200 ms
    with pytest.raises(ValidationError, match="exposure"):
        camera_config_from_dict({"type": "realsense", "name": "x", "serial": "1", "exposure": 3})
    cfg = camera_config_from_dict({"type": "realsense", "name": "wrist", "serial": "123"})
    assert isinstance(cfg, RealSenseConfig) and (cfg.width, cfg.height, cfg.fps, cfg.depth) == (640, 480, 30, True)
    assert isinstance(make_camera(cfg), RealSenseCamera)
    with pytest.raises(ValueError, match="unknown camera type 'nope'"):
        camera_config_from_dict({"type": "nope", "name": "x"})


def test_cannot_open_says_why(recording: Path, tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        playback(tmp_path / "missing.db3").connect()
    with pytest.raises(CameraError, match="1280x720@30"):
        playback(recording, width=1280, height=720).connect()
    with pytest.raises(CameraError, match="no RealSense with serial 999"):
        make_camera(RealSenseConfig(name="x", serial="999")).connect()


def test_every_frame_content_pairing_units_and_duplicates(recording: Path) -> None:
    """Non-real-time playback hands the driver every recorded frameset, so its bookkeeping is exact; the reader
    gets the newest frame at each read (it may skip some when it lags), each checked for content and units."""
    with playback(recording, playback_realtime=False) as camera:
        frames = read_all(camera)
        stats = camera.stats

    unique = sorted({number_at(i) for i in range(N_FRAMES)})
    # Every distinct frame published once; both re-sends of frame 11 dropped and counted; the numbers 12 and 13
    # that never came counted as dropped.
    assert (stats.frames, stats.duplicates, stats.dropped) == (len(unique), len(REPEATS_AT), len(REPEATS_AT))
    numbers = [f.frame_number for f in frames]
    assert numbers == sorted(set(numbers)) and set(numbers) <= set(unique) and numbers[-1] == unique[-1]
    assert len(numbers) >= 0.5 * len(unique), f"only {numbers} were read"
    for f in frames:
        k = f.frame_number
        assert f.color.shape == (H, W, 3) and f.color.dtype == np.uint8
        assert (f.color[..., 0] == k).all(), f"frame {k} carries the content of another frame"
        assert (f.color[0, :, 1] == np.arange(W) % 256).all() and (f.color[:, 0, 2] == np.arange(H) % 256).all()
        assert any(f.device_ts_ms == pytest.approx(t) for t in slot_times_ms(k))
        # Depth aligned to colour (identity extrinsics, same intrinsics): same grid, 100 µm units -> mm, and
        # from the same instant as the colour frame. rs.align splats depth pixels onto the colour grid and leaves
        # ~5% of them empty (0 = no data) even here.
        assert f.depth is not None and f.depth.shape == (H, W) and f.depth.dtype == np.uint16
        valid = f.depth[f.depth > 0]
        assert valid.size > 0.9 * H * W and (valid == expected_depth_mm(k)).all()
    assert (np.diff([f.capture_ns for f in frames]) > 0).all()


def test_real_time_playback_is_paced_and_a_finished_one_times_out(recording: Path) -> None:
    with playback(recording) as camera:
        frames = read_all(camera)
        t_end = time.monotonic()
        with pytest.raises(CameraTimeout, match="end of the recording"):
            camera.read(timeout_s=0.2)
        waited = time.monotonic() - t_end

    assert 0.18 < waited < 0.35, f"read on a finished playback took {waited:.3f} s"
    numbers = [f.frame_number for f in frames]
    assert len(frames) >= 0.6 * N_FRAMES, f"only {numbers} came through"  # a loaded host drops some, as live
    assert numbers == sorted(set(numbers))
    assert all((f.color[..., 0] == f.frame_number).all() for f in frames)
    per_frame_ms = np.diff([f.capture_ns for f in frames]) / np.diff(numbers) * 1e-6
    assert 20 < np.median(per_frame_ms) < 50, "playback is not paced at ~30 fps"


def test_read_latest_never_blocks_and_ages(recording: Path) -> None:
    with playback(recording) as camera:
        first = camera.read(timeout_s=1.0)
        t0 = time.perf_counter()
        latest = camera.read_latest()
        assert time.perf_counter() - t0 < 0.005
        assert latest is not None and latest.frame_number >= first.frame_number
        time.sleep(0.05)
        assert latest.age_s() >= 0.05


def test_paused_playback_times_out_then_pipeline_restarts(recording: Path) -> None:
    with playback(recording, reconnect_after_s=0.5, stale_after_s=0.1) as camera:
        for _ in range(5):
            camera.read(timeout_s=1.0)
        assert camera.device is not None
        camera.device.as_playback().pause()  # the stream stops as if the USB cable were pulled
        t0 = time.monotonic()
        with pytest.raises(CameraTimeout, match="within 200 ms"):
            while True:  # drain a frame that may have been in flight
                camera.read(timeout_s=0.2)
        assert time.monotonic() - t0 < 0.5
        assert camera.read_latest() is not None and camera.stats.stale >= 1
        # After reconnect_after_s without frames the driver restarts the pipeline: the recording starts over.
        frame = camera.read(timeout_s=3.0)
        assert frame.frame_number < 5 and camera.stats.reconnects == 1


def test_colour_only(recording: Path) -> None:
    with playback(recording, depth=False) as camera:
        frame = camera.read(timeout_s=1.0)
    assert frame.depth is None and frame.color.shape == (H, W, 3)


def test_disconnect_is_prompt_and_a_streaming_process_dies_on_ctrl_c(recording: Path) -> None:
    camera = playback(recording)
    camera.connect()
    camera.read(timeout_s=1.0)
    t0 = time.monotonic()
    camera.disconnect()
    assert time.monotonic() - t0 < 0.5 and not camera.is_connected

    # SIGINT as a terminal delivers it: a suite started as a background job of a non-interactive shell has SIGINT
    # ignored, a child inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler at all.
    script = textwrap.dedent(f"""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import sys
        from pathlib import Path
        from robot.cameras.realsense import RealSenseCamera, RealSenseConfig
        camera = RealSenseCamera(RealSenseConfig(name="x", playback_file=Path({str(recording)!r})))
        camera.connect()
        camera.read(timeout_s=2.0)
        print("streaming", flush=True)
        while True:
            camera.read_latest()
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5.0) != 0  # KeyboardInterrupt, no hang in librealsense teardown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
