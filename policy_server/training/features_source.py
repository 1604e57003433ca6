"""The recorded dataset as `dv-features` reads it: its episodes, their source files, and their decoded streams.

Paths and units come from the recorder's own layout (`teleop.dataset.layout`): colour is one mp4 per episode per
camera (decoded with PyAV), depth one folder of uint16 PNGs per episode per camera in millimetres (0 = no data,
docs/conventions.md#units-and-clocks), and the tabular data one parquet per episode.

A *signature* of a source file (size, mtime, sha256) is what ties a feature cache to the bytes it was computed
from: size and mtime are checked first because they are cheap, the hash decides when they differ (a copied
dataset keeps its bytes but not always its mtimes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from dreamvla_client.conventions import ACTION_DIM, STATE_DIM
from teleop.dataset import layout as L

# Where dv-teleop notes each session's sim seeds (teleop.cli.SESSIONS_DIR; read here without importing the recorder).
SESSIONS_DIR = "meta/dv_sessions"
MM_PER_M = 1000.0  # recorded depth is uint16 millimetres; the one place it becomes metres is `depth_metres`


class DatasetReadError(RuntimeError):
    """The dataset cannot be read as a dv-teleop recording; the message names the file."""


@dataclass(frozen=True)
class EpisodeSource:
    """One recorded episode: where its rows sit in the dataset and which files hold it."""

    index: int
    start: int  # global row of its first frame (dataset_from_index)
    length: int
    instruction: str
    seed: int | None
    files: dict[str, str]  # role ("data", "video.<cam>", "depth.<cam>") -> path relative to the dataset root


@dataclass(frozen=True)
class DatasetSource:
    root: Path
    fps: int
    cameras: dict[str, L.CameraSpec]
    episodes: list[EpisodeSource]

    @property
    def total_frames(self) -> int:
        return sum(e.length for e in self.episodes)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetReadError(f"{path} is missing: not a dataset recorded by dv-teleop") from None
    except (OSError, ValueError) as exc:
        raise DatasetReadError(f"{path} cannot be read: {exc}") from exc


def recorded_seeds(root: Path) -> dict[int, int | None]:
    """Episode index -> the sim seed its session file notes (absent for real recordings)."""
    seeds: dict[int, int | None] = {}
    for path in sorted((root / SESSIONS_DIR).glob("*.json")):
        for ep, entry in _read_json(path).get("episodes", {}).items():
            seeds[int(ep)] = entry.get("seed")
    return seeds


def read_dataset(root: Path) -> DatasetSource:
    """The dataset's episodes as `meta/info.json` indexes them (episodes committed but not yet indexed are not
    part of it), with each episode's instruction from its `meta/episodes` row."""
    root = Path(root)
    info = _read_json(root / L.INFO)
    cfg = L.DatasetConfig.model_validate(_read_json(root / L.DV_CONFIG))
    seeds = recorded_seeds(root)
    episodes, start = [], 0
    for ep in range(int(info["total_episodes"])):
        cf = L.chunk_file(ep)
        meta_path = root / L.EPISODES_PATH.format(**cf)
        try:
            row = pq.read_table(meta_path, columns=["episode_index", "tasks", "length"]).to_pylist()[0]
        except (OSError, IndexError, KeyError) as exc:
            raise DatasetReadError(f"{meta_path} cannot be read: {exc}") from exc
        files = {"data": L.DATA_PATH.format(**cf)}
        for cam, spec in cfg.cameras.items():
            files[f"video.{cam}"] = L.VIDEO_PATH.format(video_key=L.video_key(cam), **cf)
            if spec.depth:
                files[f"depth.{cam}"] = L.DEPTH_PATH.format(depth_key=L.depth_key(cam), **cf)
        episodes.append(EpisodeSource(ep, start, int(row["length"]), row["tasks"][0], seeds.get(ep), files))
        start += int(row["length"])
    if start != int(info["total_frames"]):
        raise DatasetReadError(f"{root / L.INFO}: total_frames {info['total_frames']} but the episodes hold {start}")
    return DatasetSource(root, int(info["fps"]), dict(cfg.cameras), episodes)


# ------------------------------------------------------------------------------------------------ signatures


def stat_key(path: Path) -> dict[str, int]:
    """Cheap identity of a file or a folder of files: total size, newest mtime, file count."""
    if path.is_dir():
        stats = [e.stat() for e in os.scandir(path) if e.is_file()]
        return {"size": sum(s.st_size for s in stats), "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
                "count": len(stats)}
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "count": 1}


def signature(path: Path) -> dict[str, Any]:
    """stat_key plus the content hash (the recorder's own sha256 of a file or a folder tree)."""
    return {**stat_key(path), "sha256": L.sha256_tree(path)}


def signature_change(path: Path, recorded: dict[str, Any]) -> str | None:
    """Why `path` no longer matches its recorded signature, or None if it does (hashing only when stat differs)."""
    if not path.exists():
        return "missing"
    now = stat_key(path)
    if now == {k: recorded[k] for k in now}:
        return None
    if now["size"] != recorded["size"] or now["count"] != recorded["count"]:
        return f"size {recorded['size']} -> {now['size']} bytes"
    return None if L.sha256_tree(path) == recorded["sha256"] else "content changed (sha256 differs)"


# ------------------------------------------------------------------------------------------------ streams


def read_vectors(root: Path, episode: EpisodeSource) -> tuple[np.ndarray, np.ndarray]:
    """(state (n, STATE_DIM), action (n, ACTION_DIM)) float32, as recorded."""
    table = pq.read_table(root / episode.files["data"], columns=["observation.state", "action"])
    out = tuple(np.stack(table.column(k).to_numpy(zero_copy_only=False)).astype(np.float32)
                for k in ("observation.state", "action"))
    for k, arr, dim in zip(("observation.state", "action"), out, (STATE_DIM, ACTION_DIM), strict=True):
        if arr.shape != (episode.length, dim):
            raise DatasetReadError(f"{episode.files['data']}: {k} is {arr.shape}, expected ({episode.length}, {dim})")
    return out  # type: ignore[return-value]


def decode_video(path: Path, frames: int) -> np.ndarray:
    """Every frame of an mp4 as RGB uint8 (n, H, W, 3), decoded with PyAV (the library the writer encodes with)."""
    import av

    with av.open(str(path)) as box:
        out = np.stack([f.to_ndarray(format="rgb24") for f in box.decode(box.streams.video[0])])
    if len(out) != frames:
        raise DatasetReadError(f"{path}: {len(out)} video frames decoded, the episode has {frames} rows")
    return out


def read_depth_mm(folder: Path, frames: int) -> np.ndarray:
    """The episode's depth PNGs as uint16 millimetres (n, H, W), 0 where the camera had no data."""
    out = []
    for i in range(frames):
        d = cv2.imread(str(folder / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        if d is None or d.dtype != np.uint16 or d.ndim != 2:
            raise DatasetReadError(f"{folder / f'{i:06d}.png'}: not a 16-bit single-channel depth PNG")
        out.append(d)
    return np.stack(out)


def depth_metres(depth_mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres -> float32 metres; 0 (no data) stays 0, which the depth loss masks (target <= 0)."""
    return depth_mm.astype(np.float32) / MM_PER_M
