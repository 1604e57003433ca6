"""The feature cache `dv-features` writes next to a dataset, and the reader the trainer opens it with.

Layout: `DATASET/dv_features/<name>/`, one folder per feature spec (`FeatureSpec`: what the targets are computed
for, model-derived sizes plus the flow method and gap). Inside:
- `build.json`: the spec, written when a build starts (it names an unfinished folder);
- `episodes/episode_NNNNNN/`: one finished episode's arrays, renamed into place atomically while a build runs;
- `<kind>.<camera>.npy`, `state.npy`, `action.npy`: the whole dataset's arrays, concatenated over episodes;
- `manifest.json`: written last, only after every array is in place. Without it the folder is an unfinished
  build and `FeatureCache.open` refuses it; with it, it records the dataset content the arrays came from (each
  source file's size, mtime and sha256), so a dataset changed since is refused with the file that changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from dreamvla_client.conventions import ACTION_DIM, STATE_DIM
from policy_server.model.config import ModelConfig
from policy_server.training.features_source import (
    DatasetReadError,
    EpisodeSource,
    read_dataset,
    signature_change,
)
from policy_server.training.flow import tracker_settings

# Bump when what a cache holds changes meaning (an algorithm or a unit): every older cache is then refused.
FEATURES_VERSION = 1
CACHE_DIR = "dv_features"
BUILD = "build.json"
MANIFEST = "manifest.json"
EPISODES = "episodes"
FlowMethod = Literal["dis", "cotracker"]
SEMANTIC = ("sam", "dino")


class FeatureCacheError(RuntimeError):
    """No usable cache: missing, unfinished, built for another config, or older than the dataset (the message
    says which and what to run)."""


class FeatureSpec(BaseModel):
    """Everything the cached numbers depend on besides the dataset; its hash names the cache folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = FEATURES_VERSION
    cameras: tuple[str, ...]
    image_size: int
    grid: int  # patches per side; the track lattice has 2*grid points per side
    tracks: FlowMethod | None  # None: the config has no dynamic-region head
    gap: int  # tracks measure motion from frame j to j + gap
    tracker: dict[str, int | float | str]  # the tracker's settings (flow.tracker_settings)
    depth: bool
    semantics: tuple[str, ...]  # teachers of the config's semantic heads ("sam", "dino")
    semantic_grid: dict[str, int]  # teacher -> tokens per side
    semantic_dim: dict[str, int]  # teacher -> channels

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        flow = f"-{self.tracks}{self.gap}" if self.tracks else ""
        return f"r{self.image_size}{flow}-{self.fingerprint}"

    def covers(self, want: FeatureSpec) -> bool:
        """Whether a cache built to this spec holds everything `want` needs: the same images, and every target
        `want` has (a cache for the full model also serves its ablations, which need fewer targets). The flow
        method and gap are the user's choice, checked apart."""
        same = ("version", "cameras", "image_size", "grid")
        if any(getattr(self, k) != getattr(want, k) for k in same) or (want.depth and not self.depth):
            return False
        if want.tracks is not None and self.tracks is None:
            return False
        return all(m in self.semantics and self.semantic_grid[m] == want.semantic_grid[m]
                   and self.semantic_dim[m] == want.semantic_dim[m] for m in want.semantics)


def feature_spec(cfg: ModelConfig, flow: FlowMethod = "dis", gap: int | None = None) -> FeatureSpec:
    """The spec a model config needs. The default gap is the config's `future_steps` (3): the dynamic-region head
    predicts frame t + future_steps, so the regions that move between t and that frame are the ones to learn. At
    our 15 fps that is 0.2 s, the span of the released gaps (3 at LIBERO's 20 Hz, 5 at CALVIN's 30 Hz)."""
    sem = tuple(m for m in cfg.dream_order if m in SEMANTIC)
    d = cfg.decoder
    return FeatureSpec(
        cameras=cfg.cameras, image_size=cfg.vision.image_size, grid=cfg.vision.grid,
        tracks=flow if "dynamic" in cfg.dream else None, gap=cfg.future_steps if gap is None else gap,
        tracker=tracker_settings(flow if "dynamic" in cfg.dream else None),
        depth="depth" in cfg.dream, semantics=sem,
        semantic_grid={m: {"sam": d.sam_grid, "dino": d.dino_grid}[m] for m in sem},
        semantic_dim={m: {"sam": d.sam_dim, "dino": d.dino_dim}[m] for m in sem},
    )


def cache_root(dataset: Path) -> Path:
    return Path(dataset) / CACHE_DIR


def array_names(spec: FeatureSpec) -> list[str]:
    """File stems of the cache's arrays ("images.static", "tracks.wrist", ..., "state", "action")."""
    kinds = ["images", *(["depth"] if spec.depth else []), *(["tracks"] if spec.tracks else []), *spec.semantics]
    return [f"{k}.{cam}" for k in kinds for cam in spec.cameras] + ["state", "action"]


def array_layout(spec: FeatureSpec, frames: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of each array over `frames` rows."""
    r, pts = spec.image_size, (2 * spec.grid) ** 2
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for name in array_names(spec):
        kind = name.split(".")[0]
        out[name] = {
            "images": ((frames, r, r, 3), "uint8"),
            "depth": ((frames, r, r), "float16"),
            "tracks": ((frames, pts, 2), "float16"),
            "state": ((frames, STATE_DIM), "float32"),
            "action": ((frames, ACTION_DIM), "float32"),
        }.get(kind) or ((frames, spec.semantic_grid.get(kind, 0) ** 2, spec.semantic_dim.get(kind, 0)), "float16")
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def spec_diff(have: dict[str, Any], want: dict[str, Any]) -> str:
    keys = sorted(set(have) | set(want))
    return ", ".join(f"{k}: cache {have.get(k)!r}, config {want.get(k)!r}" for k in keys if have.get(k) != want.get(k))


def episode_staleness(dataset: Path, recorded: dict[str, Any], now: EpisodeSource | None) -> str | None:
    """Why a cached episode no longer matches the dataset's episode (None: it still does)."""
    ep = recorded["index"]
    if now is None:
        return f"episode {ep} is no longer in the dataset"
    if (now.start, now.length) != (recorded["start"], recorded["length"]):
        return (f"episode {ep} is rows {now.start}+{now.length} in the dataset, "
                f"{recorded['start']}+{recorded['length']} in the cache")
    for role, sig in recorded["sources"].items():
        rel = now.files.get(role)
        why = "no longer recorded" if rel is None else signature_change(dataset / rel, sig)
        if why is not None:
            return f"episode {ep}: {rel or role} {why}"
    return None


@dataclass
class FeatureCache:
    """A finished, current cache, memory-mapped read-only. Rows are the dataset's frames in order."""

    root: Path
    spec: FeatureSpec
    cameras: list[str]
    instructions: list[str]
    episodes: list[tuple[int, int]]  # (start row, length)
    images: dict[str, np.ndarray]  # (F, R, R, 3) uint8
    depth: dict[str, np.ndarray] | None  # (F, R, R) float16 metres, 0 = no data
    tracks: dict[str, np.ndarray] | None  # (F, (2*grid)**2, 2) float16 pixels of R, frame j -> j + gap
    semantics: dict[str, dict[str, np.ndarray]]  # teacher -> camera -> (F, N, C) float16
    state: np.ndarray  # (F, STATE_DIM) float32, as recorded
    action: np.ndarray  # (F, ACTION_DIM) float32, as recorded (robot units)
    seeds: list[int | None]

    @classmethod
    def open(cls, dataset: Path, cfg: ModelConfig, *, flow: FlowMethod | None = None,
             gap: int | None = None) -> FeatureCache:
        """The cache of `dataset` for `cfg`; `flow`/`gap` pick among caches built with different tracks (by
        default the one that exists). Refuses, with the reason, anything missing, unfinished, built for another
        config or older than the dataset."""
        dataset = Path(dataset)
        want = feature_spec(cfg, flow or "dis", gap)
        folder = _find(dataset, want, flow, gap, cfg.name)
        manifest = read_json(folder / MANIFEST)
        assert manifest is not None
        spec = FeatureSpec.model_validate(manifest["spec"])
        stale = dataset_change(dataset, manifest)
        if stale is not None:
            raise FeatureCacheError(f"stale feature cache {folder}: {stale}; run `dv-features {dataset} --config "
                                    f"{cfg.name} --resume` to update it")
        frames = manifest["frames"]
        arrays = {}
        for name, (shape, dtype) in array_layout(spec, frames).items():
            path = folder / f"{name}.npy"
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise FeatureCacheError(f"{path} cannot be read ({exc}): rebuild with `dv-features {dataset} "
                                        f"--config {cfg.name}`") from exc
            if arr.shape != shape or arr.dtype != np.dtype(dtype):
                raise FeatureCacheError(f"{path} is {arr.shape} {arr.dtype}, the manifest promises {shape} {dtype}")
            arrays[name] = arr
        per_cam = lambda kind: {c: arrays[f"{kind}.{c}"] for c in spec.cameras}  # noqa: E731
        eps = manifest["episodes"]
        return cls(
            root=folder, spec=spec, cameras=list(spec.cameras),
            instructions=[e["instruction"] for e in eps], episodes=[(e["start"], e["length"]) for e in eps],
            images=per_cam("images"), depth=per_cam("depth") if spec.depth else None,
            tracks=per_cam("tracks") if spec.tracks else None,
            semantics={m: per_cam(m) for m in spec.semantics},
            state=arrays["state"], action=arrays["action"], seeds=[e["seed"] for e in eps],
        )


def _find(dataset: Path, want: FeatureSpec, flow: str | None, gap: int | None, config: str) -> Path:
    """The one cache folder whose spec fits; otherwise the reason none does."""
    rebuild = f"`dv-features {dataset} --config {config}`"
    root = cache_root(dataset)
    builds = sorted(p for p in root.iterdir() if (p / BUILD).is_file()) if root.is_dir() else []
    if not builds:
        raise FeatureCacheError(f"{dataset} has no feature cache ({CACHE_DIR}/ is empty or missing): run {rebuild}")
    fits, nearest = [], None
    for folder in builds:
        spec_json = (read_json(folder / BUILD) or {}).get("spec")
        try:
            have = FeatureSpec.model_validate(spec_json)
        except ValueError:
            nearest = nearest or (folder, spec_json if isinstance(spec_json, dict) else {})
            continue
        if (not have.covers(want) or have.tracker != tracker_settings(have.tracks)
                or (flow and have.tracks != flow) or (gap and have.gap != gap)):
            nearest = nearest or (folder, have.model_dump(mode="json"))
            continue
        fits.append((folder, have))
    if not fits:
        folder, have = nearest  # type: ignore[misc]
        wanted = want.model_dump(mode="json") | ({"tracks": flow} if flow else {}) | ({"gap": gap} if gap else {})
        wanted["tracker"] = tracker_settings(have.get("tracks"))
        raise FeatureCacheError(f"no feature cache in {root} fits config {config!r} (the nearest, {folder.name}, "
                                f"was built for another config: {spec_diff(have, wanted)}): run {rebuild}")
    done = [(f, s) for f, s in fits if (f / MANIFEST).is_file()]
    if not done:
        folder, have = fits[0]
        finished = len(list((folder / EPISODES).glob("episode_*"))) if (folder / EPISODES).is_dir() else 0
        flags = f" --flow {have.tracks} --gap {have.gap}" if have.tracks else ""
        raise FeatureCacheError(f"the feature cache {folder} is unfinished ({finished} episodes done, no manifest; "
                                f"an interrupted dv-features): run `dv-features {dataset} --config {config}{flags} "
                                "--resume`")
    if len(done) > 1:
        names = ", ".join(f"{f.name} ({s.tracks} gap {s.gap})" for f, s in done)
        raise FeatureCacheError(f"several feature caches in {root} fit config {config!r}: {names}; pass flow/gap to "
                                "choose one, or delete the others")
    return done[0][0]


def dataset_change(dataset: Path, manifest: dict[str, Any]) -> str | None:
    """How the dataset differs from the one the manifest's arrays came from (None: it does not)."""
    try:
        now = read_dataset(dataset)
    except DatasetReadError as exc:
        return f"the dataset cannot be read: {exc}"
    if len(now.episodes) != len(manifest["episodes"]):
        return f"{dataset} has {len(now.episodes)} episodes, the cache was built from {len(manifest['episodes'])}"
    for rec, ep in zip(manifest["episodes"], now.episodes, strict=True):
        why = episode_staleness(dataset, rec, ep)
        if why is not None:
            return f"{why} since the cache was built"
    return None
