"""Shared fixtures: a small seeded DreamVLA and synthetic training windows for it; the test process's scheduling."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def ordinary_scheduling():
    """Run every test, and every process it starts, under the ordinary scheduler. libfranka raises the thread that
    runs a motion to SCHED_FIFO 99 (it can, as root), and in an in-process franky-sim test that is the test's main
    thread; every subprocess started after that inherited real-time FIFO priority, which starved its own sim's
    physics thread (dv-robot children saw the arm jump: `tcp_speed` at 0.3-0.5 m/s; e-stop latencies over 10 ms)."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    yield
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@pytest.fixture
def tiny_cfg():
    from policy_server.model.config import preset

    return preset("tiny")


def make_batch(cfg, batch: int = 2, seed: int = 0):
    """A deterministic window batch with every teacher target present (shapes as TrainBatch documents)."""
    import torch

    from policy_server.model.dreamvla import TrainBatch
    from policy_server.model.text import build_tokenizer

    g = torch.Generator().manual_seed(seed)
    s, r = cfg.sequence_length, cfg.vision.image_size
    grid = cfg.vision.grid
    d = cfg.decoder
    per_cam = lambda *shape: {c: torch.randn(batch, s, *shape, generator=g) for c in cfg.cameras}  # noqa: E731
    return TrainBatch(
        text_ids=build_tokenizer(cfg.text, None)(["open the drawer"] * batch),
        images=per_cam(3, r, r),
        state=torch.cat([torch.randn(batch, s, 6, generator=g), torch.ones(batch, s, 1)], dim=-1),
        actions=torch.rand(batch, s, cfg.action.chunk, cfg.action.dim, generator=g) * 2 - 1,
        future_images=per_cam(3, r, r),
        tracks={c: torch.randn(batch, s, 4 * grid * grid, 2, generator=g) * 2 for c in cfg.cameras},
        future_depth={c: torch.rand(batch, s, 1, r, r, generator=g) + 0.3 for c in cfg.cameras},
        future_sam=per_cam(d.sam_grid**2, d.sam_dim),
        future_dino=per_cam(d.dino_grid**2, d.dino_dim),
    )


@pytest.fixture
def batch_factory():
    return make_batch
