"""Crash-safe LeRobot-v3 dataset: layout/schema, kill -9 trials, resume refusal, ENOSPC, repair, CLI."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from teleop.dataset import writer as W
from teleop.dataset.cli import main as cli_main
from teleop.dataset.layout import CameraSpec, DatasetConfig, ResumeMismatch
from teleop.dataset.verify import repair, verify
from teleop.dataset.writer import DatasetWriter, EpisodeAborted

REPO = Path(__file__).resolve().parents[2]
H, WD = 48, 64


def make_cfg(**kw) -> DatasetConfig:
    base = dict(
        fps=15, robot_type="franka_fr3",
        cameras={"wrist": CameraSpec(height=H, width=WD, depth=True), "static": CameraSpec(height=H, width=WD)},
        state_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper_width", "gripper_state"],
        action_names=["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"],
        extra_features={"observation.stamps": ["t_wrist", "t_static", "t_robot"]},
        robot_config={"max_speed": 0.25}, calibration_hash="abc123",
    )
    base.update(kw)
    return DatasetConfig(**base)


def frame(ep: int, i: int, cfg: DatasetConfig) -> dict:
    rgb = np.full((H, WD, 3), (ep * 37 + i * 11) % 256, np.uint8)
    return dict(
        state=np.array([ep, i, 0, 0, 0, 0, 0.04, 1], np.float32),
        action=np.array([0.01 * i, 0, 0, 0, 0, 0, ep % 2], np.float32),
        images={c: rgb for c in cfg.cameras},
        depth={c: np.full((H, WD), 1000 + ep * 10 + i, np.uint16) for c, s in cfg.cameras.items() if s.depth},
        extras={"observation.stamps": np.array([i / 15, i / 15 + 0.001, i / 15], np.float32)},
    )


def record(ds: DatasetWriter, n: int, task: str = "drawer_open") -> int:
    ep = ds.begin_episode(task)
    for i in range(n):
        ep.add_frame(**frame(ep.index, i, ds.cfg))
    return ep.commit()


def test_layout_matches_lerobot_v3(tmp_path: Path) -> None:
    cfg = make_cfg()
    ds = DatasetWriter(tmp_path, cfg)
    lengths = [5, 7, 4]
    for k, n in enumerate(lengths):
        assert record(ds, n, task=["drawer_open", "pick_cube"][k % 2]) == k
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    # exactly the keys lerobot 0.6.1's LeRobotDataset.create()+finalize() writes (scripts/check_lerobot_load.py)
    assert set(info) == {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                         "chunks_size", "fps", "splits", "data_path", "video_path", "features",
                         "data_files_size_in_mb", "video_files_size_in_mb"}
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 16, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:3"}
    f = info["features"]
    assert f["observation.images.wrist"]["dtype"] == "video" and f["observation.images.wrist"]["shape"] == [H, WD, 3]
    # the entries lerobot probes from the stream (get_video_info), under its names; the codec as PyAV names it
    assert f["observation.images.wrist"]["info"] == {
        "video.height": H, "video.width": WD, "video.codec": "mpeg4", "video.pix_fmt": "yuv420p", "video.fps": 15,
        "video.channels": 3, "has_audio": False, "is_depth_map": False}
    assert f["observation.state"] == {"dtype": "float32", "shape": [8], "names": cfg.state_names}
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in f
    for k in range(3):
        assert (tmp_path / f"data/chunk-000/file-{k:03d}.parquet").exists()
        assert (tmp_path / f"meta/episodes/chunk-000/file-{k:03d}.parquet").exists()
        for cam in ("wrist", "static"):
            assert (tmp_path / f"videos/observation.images.{cam}/chunk-000/file-{k:03d}.mp4").exists()
        pngs = list((tmp_path / f"depth/observation.depth.wrist/chunk-000/file-{k:03d}").glob("*.png"))
        assert len(pngs) == lengths[k]
    # depth is lossless uint16
    import cv2

    d = cv2.imread(str(tmp_path / "depth/observation.depth.wrist/chunk-000/file-001/000003.png"), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16 and int(d[0, 0]) == 1000 + 10 + 3
    data = pq.read_table(tmp_path / "data/chunk-000/file-001.parquet")
    assert set(data.column_names) >= {"observation.state", "action", "timestamp", "frame_index", "episode_index",
                                      "index", "task_index", "observation.stamps"}
    assert data.column("index").to_pylist() == list(range(5, 12))
    assert data.column("task_index").to_pylist() == [1] * 7
    epm = pq.read_table(tmp_path / "meta/episodes/chunk-000/file-002.parquet").to_pylist()[0]
    assert epm["dataset_from_index"] == 12 and epm["dataset_to_index"] == 16 and epm["tasks"] == ["drawer_open"]
    for key in ("data/chunk_index", "data/file_index", "videos/observation.images.wrist/from_timestamp",
                "videos/observation.images.wrist/to_timestamp", "meta/episodes/file_index", "length"):
        assert key in epm
    tasks = pq.read_table(tmp_path / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    assert tasks.column("task").to_pylist() == ["drawer_open", "pick_cube"]
    stats = json.loads((tmp_path / "meta/stats.json").read_text())
    assert stats["observation.state"]["count"] == [16]
    assert np.asarray(stats["observation.images.wrist"]["mean"]).shape == (3, 1, 1)
    for k, st in stats.items():  # lerobot's keys, quantiles included (QUANTILES normalisation needs q01/q99)
        assert set(st) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}, k
    assert np.asarray(stats["observation.images.wrist"]["q99"]).shape == (3, 1, 1)
    assert stats["observation.state"]["q50"][6] == pytest.approx(0.04)
    eps = pq.read_schema(tmp_path / "meta/episodes/chunk-000/file-000.parquet")
    assert str(eps.field("stats/action/count").type) == "list<element: int64>"
    assert str(eps.field("stats/observation.images.wrist/q01").type) == \
        "list<element: list<element: list<element: double>>>"
    r = verify(tmp_path)
    assert r.ok, r.errors
    assert (r.episodes, r.frames, r.flagged) == (3, 16, [])
    assert not any((tmp_path / ".dv/staging").iterdir())


def test_resume_appends_and_refuses_other_config(tmp_path: Path) -> None:
    ds = DatasetWriter(tmp_path, make_cfg())
    record(ds, 3)
    ds2 = DatasetWriter(tmp_path, make_cfg())
    assert record(ds2, 4) == 1
    assert verify(tmp_path).ok
    cams = {"wrist": CameraSpec(height=H, width=WD + 16, depth=True), "static": CameraSpec(height=H, width=WD)}
    with pytest.raises(ResumeMismatch, match=r"cameras\.wrist\.width: dataset has 64, requested 80"):
        DatasetWriter(tmp_path, make_cfg(cameras=cams))
    with pytest.raises(ResumeMismatch, match=r"robot_type: dataset has 'franka_fr3', requested 'panda'"):
        DatasetWriter(tmp_path, make_cfg(robot_type="panda"))
    with pytest.raises(ResumeMismatch, match="calibration_hash"):
        DatasetWriter(tmp_path, make_cfg(calibration_hash="zzz"))
    assert verify(tmp_path).ok


def test_enospc_aborts_episode_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = DatasetWriter(tmp_path, make_cfg())
    record(ds, 5)
    real = W.write_bytes
    calls = {"n": 0}

    def full_disk(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(W, "write_bytes", full_disk)
    ep = ds.begin_episode("drawer_open")
    with pytest.raises(EpisodeAborted, match="out of disk space"):
        for i in range(10):
            ep.add_frame(**frame(ep.index, i, ds.cfg))
    assert not any((tmp_path / ".dv/staging").iterdir())
    r = verify(tmp_path)
    assert r.ok and r.episodes == 1 and r.flagged == []
    monkeypatch.setattr(W, "write_bytes", real)
    assert record(ds, 2) == 1  # the writer is usable afterwards; the index did not skip
    assert verify(tmp_path).ok
    # pre-flight free-space check refuses to start
    ds_small = DatasetWriter(tmp_path, make_cfg(), min_free_bytes=1 << 62)
    with pytest.raises(EpisodeAborted, match="bytes free"):
        ds_small.begin_episode("drawer_open")


def test_exception_inside_episode_context_aborts(tmp_path: Path) -> None:
    ds = DatasetWriter(tmp_path, make_cfg())
    record(ds, 2)
    with pytest.raises(RuntimeError, match="camera unplugged"), ds.episode("drawer_open") as ep:
        ep.add_frame(**frame(ep.index, 0, ds.cfg))
        raise RuntimeError("camera unplugged")
    with ds.episode("drawer_open") as ep:
        ep.add_frame(**frame(ep.index, 0, ds.cfg))
        ep.mark_degraded(3)
    r = verify(tmp_path)
    assert r.ok and r.episodes == 2
    m = json.loads((tmp_path / ".dv/committed/episode_000001/manifest.json").read_text())
    assert m["degraded"] and m["dropped_frames"] == 3
    with pytest.raises(EpisodeAborted, match="expected"):
        ep = ds.begin_episode("x")
        ep.add_frame(**{**frame(1, 0, ds.cfg), "state": np.zeros(3)})


def test_timestamp_must_be_frame_index_over_fps(tmp_path: Path) -> None:
    """LeRobot decodes the video frame at `timestamp` with 1e-4 s tolerance: an off-grid stamp is refused."""
    ds = DatasetWriter(tmp_path, make_cfg())
    with ds.episode("drawer_open") as ep:
        for i in range(3):
            ep.add_frame(**frame(ep.index, i, ds.cfg), timestamp=i / 15)
    ep = ds.begin_episode("drawer_open")
    ep.add_frame(**frame(1, 0, ds.cfg), timestamp=0.0)
    with pytest.raises(EpisodeAborted, match="not frame_index / fps"):
        ep.add_frame(**frame(1, 1, ds.cfg), timestamp=1 / 15 + 0.004)
    r = verify(tmp_path)
    assert r.ok and r.episodes == 1 and r.frames == 3


def test_repair_cuts_back_to_verified_prefix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = DatasetWriter(tmp_path, make_cfg())
    for n in (4, 5, 6):
        record(ds, n)
    video = tmp_path / "videos/observation.images.static/chunk-000/file-001.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    r = verify(tmp_path)
    assert not r.ok and r.bad_episode == 1
    assert cli_main(["verify", str(tmp_path)]) == 1
    assert cli_main(["repair", str(tmp_path)]) == 0
    r = verify(tmp_path)
    assert r.ok and r.episodes == 1 and r.frames == 4
    assert any((tmp_path / ".dv/quarantine").rglob("file-002.parquet"))
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["total_episodes"] == 1 and info["total_frames"] == 4
    assert record(DatasetWriter(tmp_path, make_cfg()), 3) == 1  # recording resumes after the prefix
    assert verify(tmp_path).ok
    capsys.readouterr()
    assert cli_main(["stats", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["observation.state"]["count"] == [7]


def test_stats_mismatch_and_gap_detected(tmp_path: Path) -> None:
    ds = DatasetWriter(tmp_path, make_cfg())
    for _ in range(3):
        record(ds, 3)
    stats = json.loads((tmp_path / "meta/stats.json").read_text())
    stats["action"]["mean"][0] += 1.0
    (tmp_path / "meta/stats.json").write_text(json.dumps(stats))
    assert any("stats.json" in e for e in verify(tmp_path).errors)
    import shutil

    shutil.rmtree(tmp_path / ".dv/committed/episode_000001")  # a lost middle episode = an index gap
    r = verify(tmp_path)
    assert not r.ok and any("not contiguous" in e for e in r.errors)
    with pytest.raises(RuntimeError, match="gap"):
        DatasetWriter(tmp_path, make_cfg())
    r = repair(tmp_path)
    assert r.ok and r.episodes == 1  # episode 2 is quarantined: it would sit at the wrong position


CHILD = r"""
import os, sys, random
sys.path.insert(0, {tests!r})
from test_dataset import make_cfg, frame
from teleop.dataset.writer import DatasetWriter
root, log, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
ds = DatasetWriter(root, make_cfg())
os.write(fd, b"R\n")
while True:
    ep = ds.begin_episode(rng.choice(["drawer_open", "pick_cube"]))
    for i in range(rng.randint(2, 8)):
        ep.add_frame(**frame(ep.index, i, ds.cfg))
    k = ep.commit()
    os.write(fd, f"C {{k}}\n".encode())
"""


def test_kill9_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("DV_KILL_SEED", "1234")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = CHILD.format(tests=str(Path(__file__).parent))
    trials, flagged_seen = 20, 0
    for t in range(trials):
        root = tmp_path / f"ds{t // 5}"  # each dataset survives 5 successive crashes + resumes
        log = tmp_path / f"log{t}"
        p = subprocess.Popen([sys.executable, "-c", script, str(root), str(log), str(rng.randrange(1 << 30))], env=env)
        deadline = time.monotonic() + 20
        while not (log.exists() and log.read_text().startswith("R")):
            assert p.poll() is None and time.monotonic() < deadline, "child did not start"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        committed = [int(x.split()[1]) for x in log.read_text().splitlines() if x.startswith("C")]
        r = verify(root)
        assert r.ok, (t, r.errors)
        flagged_seen += bool(r.flagged)
        # every episode whose commit() returned is indexed and intact, with its own data
        assert all(k < r.episodes for k in committed), (committed, r.episodes)
        for k in committed:
            st = np.stack(pq.read_table(root / f"data/chunk-000/file-{k:03d}.parquet")
                          .column("observation.state").to_numpy(zero_copy_only=False))
            assert (st[:, 0] == k).all() and (st[:, 1] == np.arange(len(st))).all()
        # the interrupted episode is absent from the index (at most flagged as staging/pending)
        info = json.loads((root / "meta/info.json").read_text())
        assert info["total_episodes"] == r.episodes
    for d in sorted(tmp_path.glob("ds*")):
        DatasetWriter(d, make_cfg())  # resume = recover: delete staging, roll committed episodes forward
        r = verify(d)
        assert r.ok and r.flagged == [] and r.episodes > 0, r.errors


def test_no_torch_import() -> None:
    code = "import sys, teleop.dataset, teleop.dataset.cli, teleop.dataset.verify; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
