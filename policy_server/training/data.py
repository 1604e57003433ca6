"""Training windows cut from feature caches: the window index, its episode split, and one sample's arrays.

A sample is a window of S + F frames (S = `sequence_length`, F = `future_steps`, 3) starting at row t0 of an
episode, as the released code builds them:
    inputs           frames t0 .. t0+S-1 (images, state)
    action labels    label[t, j] = action[t0 + t + j] for j < K (the chunk)
    future targets   frame t0 + t + F for input t (RGB for the dynamic head, depth); tracks of frame t0 + t
Past the episode's end a window is padded: frames repeat the last frame, actions are zero except the gripper,
which repeats the last gripper command (a policy told to stop still holds what it holds).

Everything here is numpy on uint8/float16 memmaps, so the loader's workers never touch torch tensors until the
collate step; augmentation is an integer crop of the replicate-padded image, which equals the released
`RandomShiftsAug` grid_sample at its integer shifts exactly and costs no float work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from policy_server.model.checkpoint import Normalization
from policy_server.model.config import ModelConfig

# The released RandomShiftsAug pads, in pixels of 224-px images (static view 10, wrist view 4).
RELEASED_PAD_PX = {"static": 10, "wrist": 4}
RELEASED_IMAGE_SIZE = 224


class CacheLike(Protocol):
    """What training reads from a feature cache (`policy_server/training/features_cache.py` writes it)."""

    cameras: list[str]
    instructions: list[str]
    episodes: list[tuple[int, int]]
    images: dict[str, np.ndarray]  # cam -> (F, R, R, 3) uint8
    depth: dict[str, np.ndarray] | None  # cam -> (F, R, R) float16 metres, 0 = hole
    tracks: dict[str, np.ndarray] | None  # cam -> (F, P, 2) float16 pixel displacements
    state: np.ndarray  # (F, 7) float32
    action: np.ndarray  # (F, 7) float32, robot units


@dataclass
class ArrayCache:
    """A `CacheLike` made of arrays already at hand (synthetic data in benchmarks and tests, memory-mapped or not)."""

    cameras: list[str]
    instructions: list[str]
    episodes: list[tuple[int, int]]
    images: dict[str, np.ndarray]
    depth: dict[str, np.ndarray] | None
    tracks: dict[str, np.ndarray] | None
    state: np.ndarray
    action: np.ndarray
    seeds: list[int | None]


def shift_pads(cfg: ModelConfig) -> dict[str, int]:
    """Per-camera shift pad, scaled from the released 224-px numbers to `vision.image_size`.

    The shift is an augmentation against small camera moves; what it teaches is a shift by a fraction of the
    image (10/224 = 4.5 % static, 1.8 % wrist), so at 64 px the pad is 3 and 1 px rather than 10 and 4, which
    would move a 64-px image by up to 31 %. A camera that is neither role gets the static pad."""
    r = cfg.vision.image_size
    return {c: max(1, round(RELEASED_PAD_PX.get(c, RELEASED_PAD_PX["static"]) * r / RELEASED_IMAGE_SIZE))
            for c in cfg.cameras}


def action_scale(scale: list[float] | tuple[float, ...]) -> np.ndarray:
    return np.asarray(scale, dtype=np.float32)


@dataclass(frozen=True)
class WindowIndex:
    """Every training window of a set of caches, one row per window (parallel arrays)."""

    dataset: np.ndarray  # (W,) which cache
    episode: np.ndarray  # (W,) episode number inside that cache
    t0: np.ndarray  # (W,) first frame, relative to the episode start

    def __len__(self) -> int:
        return len(self.t0)

    def subset(self, rows: np.ndarray) -> WindowIndex:
        return WindowIndex(self.dataset[rows], self.episode[rows], self.t0[rows])


def episode_windows(length: int, sequence_length: int) -> np.ndarray:
    """Start offsets of an episode's windows: every start whose S input frames are real (one, padded, for an
    episode shorter than S). The F lookahead frames and the late labels may fall past the end: padded."""
    return np.arange(max(1, length - sequence_length + 1))


def split_episodes(caches: list[CacheLike], val_fraction: float, seed: int) -> tuple[set, set]:
    """(train, val) sets of (dataset, episode): a seeded choice per dataset, so every task keeps episodes on both
    sides; never a window of one episode on both sides (neighbouring windows share frames)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val = set(), set()
    for d, cache in enumerate(caches):
        n = len(cache.episodes)
        k = min(n - 1, math.ceil(n * val_fraction)) if val_fraction > 0 else 0
        order = np.random.default_rng([seed, d]).permutation(n)
        val |= {(d, int(e)) for e in order[:k]}
        train |= {(d, int(e)) for e in order[k:]}
    return train, val


def build_index(caches: list[CacheLike], episodes: set, sequence_length: int) -> WindowIndex:
    """The windows of the chosen (dataset, episode) pairs, in a fixed order (dataset, episode, t0)."""
    parts = []
    for d, e in sorted(episodes):
        starts = episode_windows(caches[d].episodes[e][1], sequence_length)
        parts.append(np.stack([np.full_like(starts, d), np.full_like(starts, e), starts]))
    if not parts:
        return WindowIndex(*(np.zeros(0, dtype=np.int64) for _ in range(3)))
    dataset, episode, t0 = np.concatenate(parts, axis=1)
    return WindowIndex(dataset, episode, t0)


def window_rows(start: int, length: int, t0: int, n: int) -> np.ndarray:
    """Cache rows of n frames from t0, the last frame repeated past the episode's end."""
    return start + np.minimum(t0 + np.arange(n), length - 1)


def window_labels(actions: np.ndarray, t0: int, s: int, k: int) -> np.ndarray:
    """label[t, j] = action[t0 + t + j] (t < s, j < k) from one episode's (L, 7) actions, padded past the end
    with zeros for the pose deltas and the last gripper command."""
    length = len(actions)
    seq = np.zeros((s + k - 1, actions.shape[1]), dtype=np.float32)
    idx = t0 + np.arange(s + k - 1)
    inside = idx < length
    seq[inside] = actions[idx[inside]]
    seq[~inside, 6] = actions[length - 1, 6]
    return np.lib.stride_tricks.sliding_window_view(seq, k, axis=0).transpose(0, 2, 1).copy()  # (s, k, 7)


def shift_crop(frames: np.ndarray, pad: int, shifts: np.ndarray) -> np.ndarray:
    """RandomShiftsAug at integer shifts: replicate-pad each (n, R, R[, C]) frame by `pad` and crop R x R at
    offset shifts[i] = (dy, dx) in [0, 2*pad]."""
    r = frames.shape[1]
    widths = [(0, 0), (pad, pad), (pad, pad)] + [(0, 0)] * (frames.ndim - 3)
    padded = np.pad(frames, widths, mode="edge")
    return np.stack([padded[i, dy : dy + r, dx : dx + r] for i, (dy, dx) in enumerate(shifts)])


class WindowReader:
    """One sample's numpy arrays from the caches: the per-worker half of the data loader."""

    def __init__(self, caches: list[CacheLike], index: WindowIndex, cfg: ModelConfig, text_ids: list[np.ndarray],
                 norm: Normalization, *, augment: bool, pads: dict[str, int] | None = None,
                 depth: bool = True, tracks: bool = True, future_images: bool = True) -> None:
        self.caches, self.index, self.cfg, self.text_ids = caches, index, cfg, text_ids
        self.norm, self.scale, self.augment = norm, action_scale(norm.action_scale), augment
        self.pads = pads if pads is not None else shift_pads(cfg)
        # Targets are read only when every cache has them (a batch is all-or-none per key).
        self.depth = depth and all(c.depth is not None for c in caches)
        self.tracks = tracks and all(c.tracks is not None for c in caches)
        self.future_images = future_images  # off: only the S input frames are read (no dynamic-region head)

    def __len__(self) -> int:
        return len(self.index)

    def read(self, i: int, aug_seed: tuple[int, ...] = (0,)) -> dict[str, object]:
        """Window i: images {cam: (S+F, R, R, 3) uint8} (S frames without future images), state (S, 7) and actions
        (S, K, 7) in model units, text ids;
        when read: depth {cam: (S, R, R)} of frames t+F, tracks {cam: (S, P, 2)} of frames t."""
        cfg = self.cfg
        s, f, k = cfg.sequence_length, cfg.future_steps, cfg.action.chunk
        d, e, t0 = int(self.index.dataset[i]), int(self.index.episode[i]), int(self.index.t0[i])
        cache = self.caches[d]
        start, length = cache.episodes[e]
        rows = window_rows(start, length, t0, s + f)
        labels = window_labels(cache.action[start : start + length], t0, s, k) / self.scale
        sample: dict[str, object] = {
            "text_ids": self.text_ids[d][e],
            "state": self.norm.state_to_model(np.asarray(cache.state[rows[:s]], dtype=np.float32)),
            "actions": np.clip(labels, -1.0, 1.0).astype(np.float32),
        }
        rng = np.random.default_rng(aug_seed) if self.augment else None
        images, depth, tracks = {}, {}, {}
        for cam in cfg.cameras:
            shifts = rng.integers(0, 2 * self.pads[cam] + 1, size=(s + f, 2)) if rng is not None else None
            n = s + f if self.future_images else s
            frames = cache.images[cam][rows[:n]]  # (n, R, R, 3): one fancy-index read from the memmap
            if shifts is not None:
                frames = shift_crop(frames, self.pads[cam], shifts[:n])
            images[cam] = frames
            if self.depth:
                future = np.asarray(cache.depth[cam][rows[f:]], dtype=np.float32)  # (S, R, R) frames t+F
                depth[cam] = shift_crop(future, self.pads[cam], shifts[f:]) if shifts is not None else future
            if self.tracks:
                tracks[cam] = np.asarray(cache.tracks[cam][rows[:s]], dtype=np.float32)  # not shifted, as released
        sample["images"] = images
        if depth:
            sample["depth"] = depth
        if tracks:
            sample["tracks"] = tracks
        return sample
