"""Crash-safe episode writer for the LeRobot v3 layout.

Protocol (docs/safety.md#recording):
1. An episode is written into ``.dv/staging/tmp-<uuid>/`` at its final relative paths (parquet, mp4, depth PNGs).
2. commit: close every stream, check counts, fsync every file, write ``manifest.json`` (temp + fsync + replace),
   fsync the directory, then ``rename`` it to ``.dv/committed/episode_<idx>/`` and fsync the parent.
   That rename is the commit point.
3. publish: each file is renamed to its v3 location (idempotent), then ``meta/tasks.parquet``,
   ``meta/stats.json`` and ``meta/info.json`` (last) are rewritten atomically from the committed manifests.
4. On open: staging leftovers are deleted (the interrupted episode is absent), committed-but-unpublished
   episodes are rolled forward, and a resume with a different config is refused, naming the difference.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robot.video import VideoStream, count_video_frames
from teleop.dataset import layout as L
from teleop.dataset.stats import ImageStatsAccumulator, aggregate, vector_stats

# LeRobotDataset's default tolerance_s: a video frame is decoded at `timestamp` and must lie this close to it.
TIMESTAMP_TOLERANCE_S = 1e-4


class EpisodeAborted(RuntimeError):
    pass


def write_bytes(path: Path, data: bytes) -> None:
    """Plain write (module-level so tests can inject ENOSPC)."""
    with open(path, "wb") as fh:
        fh.write(data)


def _tasks_table(tasks: list[str]) -> pa.Table:
    """tasks.parquet as pandas writes it: index = task string, column task_index."""
    t = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [], "pandas_version": "2.2.0", "creator": {"library": "pyarrow"},
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
    }
    return t.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def load_manifests(root: Path) -> list[dict[str, Any]]:
    """Committed manifests in index order (may include not-yet-published ones)."""
    out = []
    cdir = root / L.COMMITTED
    if not cdir.exists():
        return out
    for d in sorted(cdir.iterdir()):
        m = d / L.MANIFEST
        if d.name.startswith("episode_") and m.exists():
            out.append(json.loads(m.read_text()))
    return out


def publish(root: Path, manifest: dict[str, Any]) -> None:
    """Move an episode's files from its committed dir to their v3 places. Idempotent."""
    cdir = L.committed_dir(root, manifest["episode_index"])
    for rel in manifest["files"]:
        src, dst = cdir / rel, root / rel
        if not src.exists():
            continue  # already moved
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():  # stale leftover of an earlier, quarantined attempt
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        os.replace(src, dst)
        L.fsync_dir(dst.parent)
    for rel in manifest["files"]:  # drop now-empty staging subfolders
        p = (cdir / rel).parent
        while p != cdir and p.exists() and not any(p.iterdir()):
            p.rmdir()
            p = p.parent


def write_meta(root: Path, cfg: L.DatasetConfig, manifests: list[dict[str, Any]]) -> None:
    tasks: list[str] = []
    for m in manifests:
        if m["task"] not in tasks:
            tasks.append(m["task"])
    tmp = root / L.TASKS
    tmp.parent.mkdir(parents=True, exist_ok=True)
    part = tmp.with_name(f".tasks.parquet.tmp-{os.getpid()}")
    pq.write_table(_tasks_table(tasks), part)
    L.fsync_file(part)
    os.replace(part, tmp)
    L.atomic_write_json(root / L.STATS, aggregate([m["stats"] for m in manifests]) if manifests else {})
    info = L.info_json(cfg, len(manifests), sum(m["length"] for m in manifests), len(tasks))
    L.atomic_write_json(root / L.INFO, info)  # last: info.json never counts data that is not in place


class EpisodeWriter:
    def __init__(self, ds: DatasetWriter, index: int, task: str, task_index: int, from_index: int) -> None:
        self.ds, self.cfg = ds, ds.cfg
        self.index, self.task, self.task_index, self.from_index = index, task, task_index, from_index
        self.staging = ds.root / L.STAGING / f"tmp-{uuid.uuid4().hex}"
        self.staging.mkdir(parents=True)
        L.fsync_dir(self.staging.parent)
        self.cf = L.chunk_file(index)
        self.rows: dict[str, list] = {k: [] for k in ("timestamp", *L.vector_features(self.cfg))}
        self.length = 0
        self.degraded = False
        self.dropped = 0
        self.closed = False
        self._video: dict[str, VideoStream] = {}
        self._img_stats = {cam: ImageStatsAccumulator() for cam in self.cfg.cameras}
        self.files: list[str] = []
        for cam, spec in self.cfg.cameras.items():
            rel = L.VIDEO_PATH.format(video_key=L.video_key(cam), **self.cf)
            p = self.staging / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            try:
                vw = VideoStream(p, self.cfg.video_codec, self.cfg.fps, spec.width, spec.height)
            except OSError as exc:
                self._fail(exc)
            if not vw.isOpened():
                self._fail(OSError(errno.EIO, f"cannot open video writer for {cam} ({self.cfg.video_codec})"))
            self._video[cam] = vw
            self.files.append(rel)
            if spec.depth:
                drel = L.DEPTH_PATH.format(depth_key=L.depth_key(cam), **self.cf)
                (self.staging / drel).mkdir(parents=True, exist_ok=True)
                self.files.append(drel)

    # ------------------------------------------------------------------ recording
    def add_frame(self, state: np.ndarray, action: np.ndarray, images: Mapping[str, np.ndarray] | None = None,
                  depth: Mapping[str, np.ndarray] | None = None, timestamp: float | None = None,
                  extras: Mapping[str, np.ndarray] | None = None) -> None:
        """images: cam -> HxWx3 uint8 RGB; depth: cam -> HxW uint16 (mm). Raises EpisodeAborted on I/O errors."""
        if self.closed:
            raise EpisodeAborted("episode already closed")
        try:
            images, depth, extras = images or {}, depth or {}, extras or {}
            nominal = self.length / self.cfg.fps
            if timestamp is not None and abs(float(timestamp) - nominal) > TIMESTAMP_TOLERANCE_S:
                raise ValueError(f"timestamp {timestamp} of frame {self.length} is not frame_index / fps = {nominal}: "
                                 "LeRobot finds video frames by it; put capture times in an extra feature")
            vals = {"observation.state": state, "action": action, **extras}
            for k in L.vector_features(self.cfg):
                v = np.asarray(vals[k], dtype=np.float32).reshape(-1)
                want = len(self.cfg.state_names if k == "observation.state" else
                           self.cfg.action_names if k == "action" else self.cfg.extra_features[k])
                if v.shape[0] != want:
                    raise ValueError(f"{k}: expected {want} values, got {v.shape[0]}")
                self.rows[k].append(v)
            for cam, spec in self.cfg.cameras.items():
                rgb = images[cam]
                if rgb.shape != (spec.height, spec.width, 3) or rgb.dtype != np.uint8:
                    raise ValueError(f"camera {cam}: expected {(spec.height, spec.width, 3)} uint8, got "
                                     f"{rgb.shape} {rgb.dtype}")
                self._video[cam].write(rgb)
                self._img_stats[cam].add(rgb)
                if spec.depth:
                    d = depth[cam]
                    if d.shape != (spec.height, spec.width) or d.dtype != np.uint16:
                        raise ValueError(f"depth {cam}: expected {(spec.height, spec.width)} uint16, got "
                                         f"{d.shape} {d.dtype}")
                    ok, buf = cv2.imencode(".png", d)
                    if not ok:
                        raise OSError(errno.EIO, f"png encode failed for depth {cam}")
                    drel = L.DEPTH_PATH.format(depth_key=L.depth_key(cam), **self.cf)
                    write_bytes(self.staging / drel / f"{self.length:06d}.png", buf.tobytes())
            self.rows["timestamp"].append(nominal if timestamp is None else float(timestamp))
            self.length += 1
        except (OSError, ValueError, KeyError) as exc:
            # A partial frame (some streams written) cannot be kept: abort the whole episode.
            self._fail(exc)

    def mark_degraded(self, dropped: int = 1) -> None:
        """The recorder fell behind and dropped frames: keep the episode but flag it (never silently thin)."""
        self.degraded = True
        self.dropped += dropped

    # ------------------------------------------------------------------ commit / abort
    def _fail(self, exc: BaseException) -> None:
        self.abort()
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise EpisodeAborted(f"episode {self.index} aborted: out of disk space; earlier episodes intact") from exc
        raise EpisodeAborted(f"episode {self.index} aborted: {exc}") from exc

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        for vw in self._video.values():
            try:
                vw.release()
            except OSError:
                pass  # the episode is being discarded: a failing encoder flush must not stop the clean-up
        shutil.rmtree(self.staging, ignore_errors=True)
        self.ds._episode_closed(self, committed=False)

    def commit(self) -> int:
        if self.closed:
            raise EpisodeAborted("episode already closed")
        if self.length == 0:
            self.abort()
            raise EpisodeAborted(f"episode {self.index} has no frames; discarded")
        try:
            manifest = self._stage()
        except (OSError, ValueError, pa.ArrowException) as exc:
            self._fail(exc)
        # Commit point: one atomic rename.
        cdir = L.committed_dir(self.ds.root, self.index)
        cdir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.staging, cdir)
        L.fsync_dir(cdir.parent)
        self.closed = True
        self.ds._episode_closed(self, committed=True, manifest=manifest)
        return self.index

    def _stage(self) -> dict[str, Any]:
        for vw in self._video.values():
            vw.release()
        n, ep = self.length, self.index
        cols: dict[str, pa.Array] = {}
        stats: dict[str, Any] = {}
        for k in L.vector_features(self.cfg):
            arr = np.stack(self.rows[k]).astype(np.float32)
            cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.float32()), arr.shape[1])
            stats[k] = vector_stats(arr)
        scalars = {
            "timestamp": np.asarray(self.rows["timestamp"], np.float32),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, ep, np.int64),
            "index": np.arange(self.from_index, self.from_index + n, dtype=np.int64),
            "task_index": np.full(n, self.task_index, np.int64),
        }
        for k, v in scalars.items():
            cols[k] = pa.array(v)
            stats[k] = vector_stats(v)
        for cam, acc in self._img_stats.items():
            stats[L.video_key(cam)] = acc.result()
        drel = L.DATA_PATH.format(**self.cf)
        (self.staging / drel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), self.staging / drel)
        files = [drel, *self.files]
        # Check every stream has exactly n frames before committing (a silently failing encoder shows up here).
        for cam, spec in self.cfg.cameras.items():
            vrel = L.VIDEO_PATH.format(video_key=L.video_key(cam), **self.cf)
            got = count_video_frames(self.staging / vrel)
            if got != n:
                raise OSError(errno.EIO, f"video {cam}: {got} frames decoded, {n} written")
            if spec.depth:
                d = self.staging / L.DEPTH_PATH.format(depth_key=L.depth_key(cam), **self.cf)
                if len(list(d.glob("*.png"))) != n:
                    raise OSError(errno.EIO, f"depth {cam}: frame count mismatch")
        # meta/episodes row (one file per episode).
        mrel = L.EPISODES_PATH.format(**self.cf)
        row: dict[str, Any] = {
            "episode_index": [ep], "tasks": [[self.task]], "length": [n],
            "data/chunk_index": [self.cf["chunk_index"]], "data/file_index": [self.cf["file_index"]],
            "dataset_from_index": [self.from_index], "dataset_to_index": [self.from_index + n],
        }
        for cam in self.cfg.cameras:
            vk = L.video_key(cam)
            row[f"videos/{vk}/chunk_index"] = [self.cf["chunk_index"]]
            row[f"videos/{vk}/file_index"] = [self.cf["file_index"]]
            row[f"videos/{vk}/from_timestamp"] = [0.0]
            row[f"videos/{vk}/to_timestamp"] = [n / self.cfg.fps]
        row["meta/episodes/chunk_index"] = [self.cf["chunk_index"]]
        row["meta/episodes/file_index"] = [self.cf["file_index"]]
        for k, s in stats.items():  # as LeRobot stores them: nested like the stat (images 3x1x1), count int64
            for stat, v in s.items():
                row[f"stats/{k}/{stat}"] = [[int(c) for c in v] if stat == "count" else v]
        row["dv/degraded"] = [self.degraded]
        (self.staging / mrel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(row), self.staging / mrel)
        files.append(mrel)
        L.fsync_tree(self.staging)
        manifest = {
            "manifest_version": L.MANIFEST_VERSION, "status": "complete", "episode_index": ep, "length": n,
            "task": self.task, "task_index": self.task_index, "dataset_from_index": self.from_index,
            "dataset_to_index": self.from_index + n, "degraded": self.degraded, "dropped_frames": self.dropped,
            "config_sha256": self.ds.config_hash, "stats": stats,
            "files": {rel: {"sha256": L.sha256_tree(self.staging / rel)} for rel in files},
        }
        L.atomic_write_json(self.staging / L.MANIFEST, manifest)
        return manifest


class DatasetWriter:
    """Opens (creating or resuming) a dataset at ``root``; hands out one EpisodeWriter at a time."""

    def __init__(self, root: str | os.PathLike, cfg: L.DatasetConfig, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.cfg = cfg
        self.min_free_bytes = min_free_bytes
        self.config_hash = __import__("hashlib").sha256(cfg.model_dump_json().encode()).hexdigest()
        self._current: EpisodeWriter | None = None
        cpath = self.root / L.DV_CONFIG
        if cpath.exists():
            old = L.DatasetConfig.model_validate_json(cpath.read_text())
            d = old.diff(cfg)
            if d:
                raise L.ResumeMismatch(f"refusing to resume {self.root}: config differs: " + "; ".join(d))
        elif (self.root / L.INFO).exists():
            raise L.ResumeMismatch(f"refusing to resume {self.root}: meta/info.json exists but {L.DV_CONFIG} "
                                   "does not (not recorded by dv-teleop)")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            L.atomic_write_json(cpath, cfg.model_dump(mode="json"))
        self.manifests = self.recover()

    def recover(self) -> list[dict[str, Any]]:
        """Delete interrupted staging areas, roll committed episodes forward, rewrite meta."""
        st = self.root / L.STAGING
        if st.exists():
            for d in st.iterdir():
                shutil.rmtree(d, ignore_errors=True)
            L.fsync_dir(st)
        for tmp in (self.root / "meta").glob(".*.tmp-*"):  # half-written meta files from a crash
            tmp.unlink(missing_ok=True)
        manifests = load_manifests(self.root)
        for i, m in enumerate(manifests):
            if m["episode_index"] != i:
                raise RuntimeError(f"{self.root}: committed episodes have a gap at {i} (found "
                                   f"{m['episode_index']}); run `dv-data repair {self.root}`")
            publish(self.root, m)
        write_meta(self.root, self.cfg, manifests)
        return manifests

    @property
    def num_episodes(self) -> int:
        return len(self.manifests)

    def tasks(self) -> list[str]:
        out: list[str] = []
        for m in self.manifests:
            if m["task"] not in out:
                out.append(m["task"])
        return out

    def begin_episode(self, task: str) -> EpisodeWriter:
        if self._current is not None:
            raise RuntimeError("an episode is already open")
        free = shutil.disk_usage(self.root).free
        if free < self.min_free_bytes:
            raise EpisodeAborted(f"only {free} bytes free on {self.root}, need {self.min_free_bytes}; not starting")
        tasks = self.tasks()
        ti = tasks.index(task) if task in tasks else len(tasks)
        frm = sum(m["length"] for m in self.manifests)
        self._current = EpisodeWriter(self, len(self.manifests), task, ti, frm)
        return self._current

    @contextmanager
    def episode(self, task: str) -> Iterator[EpisodeWriter]:
        """Commits on normal exit; aborts on any exception (including KeyboardInterrupt)."""
        ep = self.begin_episode(task)
        try:
            yield ep
        except BaseException:
            ep.abort()
            raise
        if not ep.closed:
            ep.commit()

    def _episode_closed(self, ep: EpisodeWriter, committed: bool, manifest: dict[str, Any] | None = None) -> None:
        self._current = None
        if committed and manifest is not None:
            self.manifests.append(manifest)
            publish(self.root, manifest)
            write_meta(self.root, self.cfg, self.manifests)

    def close(self) -> None:
        if self._current is not None:
            self._current.abort()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
