"""A small in-memory stand-in for `FeatureCache` (same attributes), for the trainer's tests and their subprocesses.

It exists so the trainer's tests need no video decoding: the real cache is built and read by `dv-features`'
own tests. Episodes show a bright square that moves with the commanded deltas, so the targets are learnable.
"""

from __future__ import annotations

import numpy as np

from policy_server.model.config import ModelConfig
from policy_server.training.data import ArrayCache


def fake_cache(cfg: ModelConfig, lengths: list[int], *, instruction: str = "push the square", seed: int = 0,
               depth: bool = True, tracks: bool = True) -> ArrayCache:
    rng = np.random.default_rng(seed)
    r, p = cfg.vision.image_size, (2 * cfg.vision.grid) ** 2
    frames = sum(lengths)
    images = {c: np.full((frames, r, r, 3), 40, np.uint8) for c in cfg.cameras}
    action = np.zeros((frames, 7), np.float32)
    state = np.zeros((frames, 7), np.float32)
    row, episodes = 0, []
    for length in lengths:
        episodes.append((row, length))
        pos = rng.uniform(0.2, 0.6, size=2)
        direction = rng.choice([-1.0, 1.0], size=2)
        for i in range(length):
            step = direction * 0.02  # robot units: 2 cm per step along x and y
            action[row + i, :2] = step
            action[row + i, 6] = float(i < length // 2)
            state[row + i, :2] = pos
            state[row + i, 6] = action[row + i, 6]
            y, x = (pos * r).astype(int) % (r - 8)
            for c in cfg.cameras:
                images[c][row + i, y : y + 8, x : x + 8] = 220
            pos = pos + step
        row += length
    return ArrayCache(
        cameras=list(cfg.cameras), instructions=[instruction] * len(lengths), episodes=episodes, images=images,
        depth={c: np.full((frames, r, r), 0.8, np.float16) for c in cfg.cameras} if depth else None,
        tracks={c: rng.normal(size=(frames, p, 2)).astype(np.float16) for c in cfg.cameras} if tracks else None,
        state=state, action=action, seeds=list(range(len(lengths))),
    )


def fake_caches(cfg: ModelConfig) -> list[ArrayCache]:
    """Two small tasks (the trainer's tests and their subprocesses build the same ones)."""
    return [fake_cache(cfg, [10] * 4, seed=0), fake_cache(cfg, [9] * 3, instruction="pull the square", seed=1)]
