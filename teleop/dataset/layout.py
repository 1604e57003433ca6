"""LeRobot v3 paths, the info.json schema, and atomic/durable file helpers.

One file per episode (file index = episode % CHUNKS_SIZE, chunk = episode // CHUNKS_SIZE): a valid v3 layout
that lets each episode be closed and committed on its own (cf. axol PR #193), so a crash never leaves a
footer-less parquet holding earlier episodes (LeRobot #2495/#2529).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# Depth beside the v3 layout (LeRobot has no lossless 16-bit stream): one folder of uint16 PNGs per episode.
DEPTH_PATH = "depth/{depth_key}/chunk-{chunk_index:03d}/file-{file_index:03d}"
INFO = "meta/info.json"
STATS = "meta/stats.json"
TASKS = "meta/tasks.parquet"
DV_CONFIG = "meta/dv_config.json"
DV_DIR = ".dv"  # write-ahead area: staging/, committed/, quarantine/
STAGING = f"{DV_DIR}/staging"
COMMITTED = f"{DV_DIR}/committed"
QUARANTINE = f"{DV_DIR}/quarantine"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


# OpenCV fourcc -> the codec name LeRobot records in info.json (what PyAV probes: `stream.codec.canonical_name`).
FOURCC_CODEC = {"mp4v": "mpeg4", "avc1": "h264", "h264": "h264", "av01": "av1", "hev1": "hevc", "hvc1": "hevc"}


def chunk_file(ep: int) -> dict[str, int]:
    return {"chunk_index": ep // CHUNKS_SIZE, "file_index": ep % CHUNKS_SIZE}


def video_key(cam: str) -> str:
    return f"observation.images.{cam}"


def depth_key(cam: str) -> str:
    return f"observation.depth.{cam}"


def committed_dir(root: Path, ep: int) -> Path:
    return root / COMMITTED / f"episode_{ep:06d}"


class CameraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    height: int
    width: int
    depth: bool = False


class DatasetConfig(BaseModel):
    """Everything that must match for a resume: cameras, robot, fps, feature names, calibration."""

    model_config = ConfigDict(extra="forbid")
    fps: int = 15
    robot_type: str = "franka"
    cameras: dict[str, CameraSpec] = Field(default_factory=dict)
    state_names: list[str]
    action_names: list[str]
    extra_features: dict[str, list[str]] = Field(default_factory=dict)  # name -> element names (float32 vectors)
    robot_config: dict[str, Any] = Field(default_factory=dict)
    calibration_hash: str | None = None
    video_codec: str = "mp4v"

    def diff(self, other: DatasetConfig) -> list[str]:
        a, b = self.model_dump(mode="json"), other.model_dump(mode="json")
        return _diff(a, b, "")


class ResumeMismatch(RuntimeError):
    pass


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append(f"{p}: absent in dataset, {b[k]!r} requested")
            elif k not in b:
                out.append(f"{p}: {a[k]!r} in dataset, absent in request")
            else:
                out += _diff(a[k], b[k], p)
        return out
    return [] if a == b else [f"{path}: dataset has {a!r}, requested {b!r}"]


def features(cfg: DatasetConfig) -> dict[str, Any]:
    f: dict[str, Any] = {}
    for cam, spec in cfg.cameras.items():
        f[video_key(cam)] = {
            "dtype": "video",
            "shape": [spec.height, spec.width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": spec.height, "video.width": spec.width,
                "video.codec": FOURCC_CODEC.get(cfg.video_codec, cfg.video_codec),
                "video.pix_fmt": "yuv420p", "video.fps": cfg.fps, "video.channels": 3, "has_audio": False,
                "is_depth_map": False,  # LeRobot 0.6 key (it migrates the older "video.is_depth_map")
            },
        }
    f["observation.state"] = {"dtype": "float32", "shape": [len(cfg.state_names)], "names": list(cfg.state_names)}
    f["action"] = {"dtype": "float32", "shape": [len(cfg.action_names)], "names": list(cfg.action_names)}
    for k, names in cfg.extra_features.items():
        f[k] = {"dtype": "float32", "shape": [len(names)], "names": list(names)}
    for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                  ("index", "int64"), ("task_index", "int64")):
        f[k] = {"dtype": dt, "shape": [1], "names": None}
    return f


def vector_features(cfg: DatasetConfig) -> list[str]:
    return ["observation.state", "action", *cfg.extra_features]


def info_json(cfg: DatasetConfig, total_episodes: int, total_frames: int, total_tasks: int) -> dict[str, Any]:
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": cfg.robot_type,
        "total_episodes": total_episodes,
        "total_frames": total_frames,
        "total_tasks": total_tasks,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": cfg.fps,
        "splits": {"train": f"0:{total_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if cfg.cameras else None,
        "features": features(cfg),
    }


# ---------------------------------------------------------------- durability helpers
def fsync_file(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(p: Path) -> None:
    for dirpath, _dirs, files in os.walk(p):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(p: Path) -> str:
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f.relative_to(p).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()
