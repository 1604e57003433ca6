"""The torch side of the data path: a sharded, resumable batch order, collation, and the device batch.

The order of windows is a pure function of (seed, step): each epoch is a seeded permutation of the training
windows, each step takes the next global batch of G = micro-batch x world size x accumulation windows, and
micro-batch m of that step (m = rank * accumulation + a) is its slice m. So the data position of a run is its
step, a resumed run reads exactly the windows it would have read, and one process accumulating two
micro-batches reads what two DDP ranks read. Every window's augmentation draws from its own seed (seed, step,
position in the global batch), which keeps all of that true with any number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from policy_server.model.config import ModelConfig
from policy_server.model.dreamvla import TrainBatch
from policy_server.model.vision import preprocess_images
from policy_server.training.data import WindowReader


@dataclass(frozen=True)
class Shard:
    """This process's share of every global batch."""

    micro_batch: int
    accumulation: int = 1
    rank: int = 0
    world: int = 1

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world

    def micro_index(self, a: int) -> int:
        """Position of this rank's a-th micro-batch among the step's world x accumulation micro-batches."""
        return self.rank * self.accumulation + a


def steps_per_epoch(windows: int, shard: Shard) -> int:
    n = windows // shard.global_batch
    if n == 0:
        raise ValueError(f"{windows} training windows are fewer than one global batch of {shard.global_batch} "
                         "(micro-batch x processes x accumulation): lower --batch or --accum, or add episodes")
    return n


class WindowBatches(Sampler[list[tuple[int, tuple[int, ...]]]]):
    """Yields this rank's micro-batches, steps `start`..`stop`-1: lists of (window, augmentation seed)."""

    def __init__(self, windows: int, shard: Shard, seed: int, start: int, stop: int) -> None:
        self.windows, self.shard, self.seed, self.start, self.stop = windows, shard, seed, start, stop
        self.per_epoch = steps_per_epoch(windows, shard)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.shard.accumulation

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
        sh, g = self.shard, self.shard.global_batch
        perm, perm_epoch = None, -1
        for step in range(self.start, self.stop):
            epoch, k = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = np.random.default_rng([self.seed, epoch]).permutation(self.windows), epoch
            chosen = perm[k * g : (k + 1) * g]
            for a in range(sh.accumulation):
                m = sh.micro_index(a)
                yield [(int(chosen[m * sh.micro_batch + q]), (self.seed, step, m * sh.micro_batch + q))
                       for q in range(sh.micro_batch)]


class WindowDataset(Dataset):
    """`WindowReader` behind torch's Dataset: the item is (window, augmentation seed)."""

    def __init__(self, reader: WindowReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: tuple[int, tuple[int, ...]] | int) -> dict[str, object]:
        i, seed = item if isinstance(item, tuple) else (item, (0,))
        return self.reader.read(i, seed)


def collate(samples: list[dict[str, object]]) -> dict[str, object]:
    """Stack numpy samples into CPU tensors without float conversion (uint8 images stay uint8 until the device)."""
    out: dict[str, object] = {}
    for key, first in samples[0].items():
        if isinstance(first, dict):
            out[key] = {c: torch.from_numpy(np.stack([s[key][c] for s in samples])) for c in first}
        else:
            out[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    return out


def make_loader(reader: WindowReader, sampler: Sampler, *, workers: int, pin: bool) -> DataLoader:
    return DataLoader(WindowDataset(reader), batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin, persistent_workers=False, prefetch_factor=4 if workers else None)


def to_train_batch(raw: dict[str, object], cfg: ModelConfig, device: torch.device) -> TrainBatch:
    """Collated uint8/float tensors -> the model's TrainBatch on `device`: CLIP-normalised images split into the
    S inputs and their t+F targets (when the window has them), depth as (B, S, 1, R, R), tracks as they are."""
    s, f, r = cfg.sequence_length, cfg.future_steps, cfg.vision.image_size
    nb = device.type == "cuda"
    images, future = {}, {}
    for cam, x in raw["images"].items():
        x = x.to(device, non_blocking=nb)  # (B, S[+F], R, R, 3) uint8: 4x fewer bytes than float on the way
        b, n = x.shape[:2]
        norm = preprocess_images(x.flatten(0, 1), r).unflatten(0, (b, n))  # (B, S[+F], 3, R, R)
        images[cam] = norm[:, :s]
        if n == s + f:
            future[cam] = norm[:, f : f + s]
    depth = raw.get("depth")
    tracks = raw.get("tracks")
    return TrainBatch(
        text_ids=raw["text_ids"].to(device, non_blocking=nb),
        images=images,
        state=raw["state"].to(device, non_blocking=nb),
        actions=raw["actions"].to(device, non_blocking=nb),
        future_images=future or None,
        tracks={c: t.to(device, non_blocking=nb) for c, t in tracks.items()} if tracks else None,
        future_depth={c: d.to(device, non_blocking=nb).unsqueeze(2) for c, d in depth.items()} if depth else None,
    )
