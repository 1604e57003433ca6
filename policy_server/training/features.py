"""`dv-features`' work: turn a recorded dataset into the cache the trainer reads (`features_cache.FeatureCache`).

Per episode, every camera's frames are decoded once and brought to the model's resolution with the model's own
geometry (`preprocess_images`: bicubic short-side resize, centre crop); depth takes the same crop with
nearest-neighbour resizing (no mixing across depth edges or into holes) and is converted to metres; tracks come
from `flow.py`; semantic features from a local teacher (`features_semantic.py`).

Crash safety: each finished episode is written to a temporary folder and renamed into `episodes/` (the rename is
its commit). At the end, any older `manifest.json` is removed first, the concatenated arrays are written under
temporary names and renamed into place, and the new manifest is written last. A run killed at any point
therefore leaves a folder without a manifest, which `FeatureCache.open` refuses as unfinished and `--resume`
completes without recomputing the committed episodes, or an older finished cache whose manifest still matches
its arrays (open refuses it if the dataset changed since).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_server.model.vision import CLIP_MEAN, CLIP_STD, crop_box, preprocess_images
from policy_server.training.features_cache import (
    BUILD,
    EPISODES,
    MANIFEST,
    FeatureCacheError,
    FeatureSpec,
    array_layout,
    array_names,
    cache_root,
    dataset_change,
    episode_staleness,
    read_json,
)
from policy_server.training.features_semantic import SemanticTeacher, load_teachers
from policy_server.training.features_source import (
    DatasetSource,
    EpisodeSource,
    decode_video,
    depth_metres,
    read_dataset,
    read_depth_mm,
    read_vectors,
    signature,
)
from policy_server.training.flow import CoTracker, cotracker_weights, dis_tracks
from teleop.dataset import layout as L

log = logging.getLogger(__name__)
LOCK = ".lock"
PREPROCESS_BATCH = 64  # frames resized at once (bounds the float copy of a 640x480 episode)
# advance(frames done, what happened: "computed" | "resumed" | "reused" (an episode), "finalised", "up to date")
Progress = Callable[[int, str], None]


class FeatureBuildError(RuntimeError):
    """The dataset cannot give the features the config needs; the message names the camera, file or teacher."""


# ------------------------------------------------------------------------------------------- geometry


def model_images(frames: np.ndarray, size: int) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, R, R, 3) uint8 as the model sees them, before its normalisation: the model's own
    `preprocess_images` with the CLIP normalisation undone, so training and serving share one resize and crop."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(frames), PREPROCESS_BATCH):
        x = preprocess_images(torch.from_numpy(np.ascontiguousarray(frames[i : i + PREPROCESS_BATCH])), size)
        x = (x * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)  # (b, 3, R, R)
        out.append(x.permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def model_depth(depth_mm: np.ndarray, size: int) -> np.ndarray:
    """(n, H, W) uint16 mm -> (n, R, R) float16 metres, 0 = no data: nearest-neighbour resize, the images' crop."""
    import cv2

    n, h, w = depth_mm.shape
    nh, nw, top, left = crop_box(h, w, size)
    metres = depth_metres(depth_mm)
    out = np.empty((n, size, size), np.float16)
    for i in range(n):
        resized = metres[i] if (nh, nw) == (h, w) else cv2.resize(metres[i], (nw, nh), interpolation=cv2.INTER_NEAREST)
        out[i] = resized[top : top + size, left : left + size]
    return out


# ------------------------------------------------------------------------------------------- one episode


@dataclass
class Teachers:
    """What computes the targets a spec asks for, loaded once per run."""

    cotracker: CoTracker | None
    semantic: dict[str, SemanticTeacher]


def load_for(spec: FeatureSpec) -> Teachers:
    """Every teacher the spec needs, or MissingTeacherError naming what to download (before any work starts)."""
    tracker = CoTracker(cotracker_weights()) if spec.tracks == "cotracker" else None
    return Teachers(tracker, load_teachers(spec))


def compute_episode(dataset: Path, ep: EpisodeSource, spec: FeatureSpec, teachers: Teachers) -> dict[str, np.ndarray]:
    """Every array of one episode, named as in `array_names`."""
    out: dict[str, np.ndarray] = {}
    for cam in spec.cameras:
        images = model_images(decode_video(dataset / ep.files[f"video.{cam}"], ep.length), spec.image_size)
        out[f"images.{cam}"] = images
        if spec.depth:
            depth_mm = read_depth_mm(dataset / ep.files[f"depth.{cam}"], ep.length)
            out[f"depth.{cam}"] = model_depth(depth_mm, spec.image_size)
        if spec.tracks == "dis":
            out[f"tracks.{cam}"] = dis_tracks(images, spec.gap, spec.grid).astype(np.float16)
        elif spec.tracks == "cotracker":
            assert teachers.cotracker is not None
            out[f"tracks.{cam}"] = teachers.cotracker.tracks(images, spec.gap, spec.grid).astype(np.float16)
        for name, teacher in teachers.semantic.items():
            out[f"{name}.{cam}"] = teacher.features(images).astype(np.float16)
    out["state"], out["action"] = read_vectors(dataset, ep)
    return out


def episode_record(dataset: Path, ep: EpisodeSource) -> dict[str, Any]:
    """What the manifest keeps of an episode: rows, instruction, seed, and its source files' signatures."""
    return {"index": ep.index, "start": ep.start, "length": ep.length, "instruction": ep.instruction,
            "seed": ep.seed, "sources": {role: signature(dataset / rel) for role, rel in ep.files.items()}}


# ------------------------------------------------------------------------------------------- chunks


def chunk_dir(folder: Path, index: int) -> Path:
    return folder / EPISODES / f"episode_{index:06d}"


def write_chunk(folder: Path, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """One finished episode, committed by renaming its complete, fsynced folder into place."""
    final = chunk_dir(folder, record["index"])
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr)
    L.atomic_write_json(tmp / "episode.json", record)
    L.fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    L.fsync_dir(final.parent)


def chunk_is_current(folder: Path, dataset: Path, ep: EpisodeSource, spec: FeatureSpec) -> bool:
    record = read_json(chunk_dir(folder, ep.index) / "episode.json")
    if record is None or episode_staleness(dataset, record, ep) is not None:
        return False
    return all((chunk_dir(folder, ep.index) / f"{name}.npy").is_file() for name in array_names(spec))


def reuse_from_previous(folder: Path, dataset: Path, ep: EpisodeSource, spec: FeatureSpec) -> bool:
    """Copy an episode out of the folder's earlier finished arrays when its sources have not changed since (a
    dataset that grew by a few episodes recomputes only those). False when there is nothing to reuse."""
    manifest = read_json(folder / MANIFEST)
    if manifest is None or manifest.get("spec") != spec.model_dump(mode="json"):
        return False
    previous = {e["index"]: e for e in manifest["episodes"]}.get(ep.index)
    if previous is None or episode_staleness(dataset, previous, ep) is not None:
        return False
    rows = slice(previous["start"], previous["start"] + previous["length"])
    arrays = {name: np.array(np.load(folder / f"{name}.npy", mmap_mode="r")[rows]) for name in array_names(spec)}
    write_chunk(folder, previous, arrays)
    return True


# ------------------------------------------------------------------------------------------- the build


def check_dataset(source: DatasetSource, spec: FeatureSpec) -> None:
    for cam in spec.cameras:
        if cam not in source.cameras:
            raise FeatureBuildError(f"{source.root} has no camera {cam!r} (it recorded {sorted(source.cameras)}); "
                                    "the config's cameras must all be recorded")
        if spec.depth and not source.cameras[cam].depth:
            raise FeatureBuildError(f"{source.root}: camera {cam!r} was recorded without depth, and the config has a "
                                    "depth head (record with depth, or use a config without 'depth' in dream)")
    if not source.episodes:
        raise FeatureBuildError(f"{source.root} has no episodes")


def prepare_folder(dataset: Path, spec: FeatureSpec, resume: bool) -> tuple[Path, int]:
    """The spec's cache folder, with `build.json` written and interrupted writes removed; without `resume`, the
    finished episodes of an earlier run are discarded too. Returns (folder, episodes discarded)."""
    folder = cache_root(dataset) / spec.dirname
    episodes = folder / EPISODES
    discarded = 0
    if episodes.is_dir():
        for d in episodes.iterdir():
            if d.name.startswith(".tmp-") or not resume:
                discarded += not d.name.startswith(".tmp-")
                shutil.rmtree(d)
    if not resume:
        (folder / MANIFEST).unlink(missing_ok=True)
    L.atomic_write_json(folder / BUILD, {"spec": spec.model_dump(mode="json"), "tool": "dv-features"})
    return folder, discarded


def finalise(folder: Path, source: DatasetSource, spec: FeatureSpec, records: list[dict[str, Any]]) -> None:
    """Concatenate the committed episodes into the cache's arrays, then write the manifest last."""
    (folder / MANIFEST).unlink(missing_ok=True)
    L.fsync_dir(folder)
    frames = source.total_frames
    for name, (shape, dtype) in array_layout(spec, frames).items():
        tmp = folder / f".{name}.npy.tmp-{os.getpid()}"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
        for ep in source.episodes:
            part = np.load(chunk_dir(folder, ep.index) / f"{name}.npy", mmap_mode="r")
            if part.shape != (ep.length, *shape[1:]) or part.dtype != out.dtype:
                raise FeatureCacheError(f"{chunk_dir(folder, ep.index)}/{name}.npy is {part.shape} {part.dtype}, "
                                        f"expected {(ep.length, *shape[1:])} {out.dtype}: run again without --resume")
            out[ep.start : ep.start + ep.length] = part
        out.flush()
        del out
        L.fsync_file(tmp)
        os.replace(tmp, folder / f"{name}.npy")
    L.fsync_dir(folder)
    manifest = {"tool": "dv-features", "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "spec": spec.model_dump(mode="json"), "frames": frames, "fps": source.fps, "episodes": records}
    L.atomic_write_json(folder / MANIFEST, manifest)
    shutil.rmtree(folder / EPISODES, ignore_errors=True)


def up_to_date(dataset: Path, spec: FeatureSpec) -> bool:
    """A finished cache for `spec` exists and the dataset has not changed since."""
    folder = cache_root(dataset) / spec.dirname
    manifest = read_json(folder / MANIFEST)
    return (manifest is not None and manifest.get("spec") == spec.model_dump(mode="json")
            and all((folder / f"{name}.npy").is_file() for name in array_names(spec))
            and dataset_change(dataset, manifest) is None)


def build(dataset: Path, spec: FeatureSpec, *, resume: bool = False, progress: Progress | None = None,
          teachers: Teachers | None = None) -> Path:
    """Compute (or, with `resume`, complete) the spec's cache of `dataset`; returns its folder. A cache that is
    already finished and current is left as it is."""
    dataset = Path(dataset)
    advance = progress or (lambda frames, what: None)
    source = read_dataset(dataset)
    check_dataset(source, spec)
    if up_to_date(dataset, spec):
        advance(source.total_frames, "up to date")
        return cache_root(dataset) / spec.dirname
    teachers = teachers or load_for(spec)
    with exclusive(cache_root(dataset) / spec.dirname):
        return _build(dataset, source, spec, resume, advance, teachers)


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the folder's build lock: two runs writing one cache would interleave their chunks. The kernel drops
    the lock when its process dies, so a killed run never blocks the next one."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FeatureBuildError(f"another dv-features is building {folder}; wait for it to finish") from None
        yield


def _build(dataset: Path, source: DatasetSource, spec: FeatureSpec, resume: bool, advance: Progress,
           teachers: Teachers) -> Path:
    folder, discarded = prepare_folder(dataset, spec, resume)
    if discarded:
        log.warning("%s: discarded %d episodes an earlier run finished (pass --resume to keep them)", folder, discarded)
    records = []
    for ep in source.episodes:
        if resume and chunk_is_current(folder, dataset, ep, spec):
            what = "resumed"
            records.append(read_json(chunk_dir(folder, ep.index) / "episode.json"))
        elif resume and reuse_from_previous(folder, dataset, ep, spec):
            what = "reused"
            records.append(read_json(chunk_dir(folder, ep.index) / "episode.json"))
        else:
            what = "computed"
            record = episode_record(dataset, ep)  # signatures first: a file changing meanwhile shows as stale
            write_chunk(folder, record, compute_episode(dataset, ep, spec, teachers))
            records.append(record)
        advance(ep.length, what)
    finalise(folder, source, spec, records)
    advance(0, "finalised")
    return folder
