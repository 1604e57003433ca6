"""dv-train's data path on hand-made sequences: windows, labels, end padding, split, sharding, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_fakes import fake_cache

from policy_server.model.checkpoint import Normalization
from policy_server.model.config import preset
from policy_server.training.data import (
    ArrayCache,
    WindowReader,
    build_index,
    episode_windows,
    shift_crop,
    shift_pads,
    split_episodes,
    window_labels,
)
from policy_server.training.loader import Shard, WindowBatches, collate, to_train_batch

CFG = preset("tiny")  # S = 4, F = 3, K = 3, 64 px
SCALE = np.array([0.02] * 3 + [0.05] * 3 + [1.0], np.float32)
NORM = Normalization(action_scale=SCALE.tolist())  # no state statistics: states are read as they are


def numbered_cache(lengths: list[int]) -> ArrayCache:
    """Every array's row r holds the number r (images, depth, tracks, state); action row r is (r+1)/1000 in the
    six pose values (robot units, 1 mm per r) and gripper r % 2, so any mis-indexed read shows."""
    frames, r, p = sum(lengths), CFG.vision.image_size, (2 * CFG.vision.grid) ** 2
    rows = np.arange(frames)
    starts = np.cumsum([0, *lengths[:-1]])
    action = np.concatenate([np.repeat((rows[:, None] + 1) / 1000, 6, axis=1), (rows % 2)[:, None]], axis=1)
    return ArrayCache(
        cameras=list(CFG.cameras), instructions=[f"task {i}" for i in range(len(lengths))],
        episodes=[(int(s), n) for s, n in zip(starts, lengths, strict=True)],
        images={c: np.broadcast_to(rows[:, None, None, None] % 256, (frames, r, r, 3)).astype(np.uint8)
                for c in CFG.cameras},
        depth={c: np.broadcast_to(rows[:, None, None], (frames, r, r)).astype(np.float16) for c in CFG.cameras},
        tracks={c: np.broadcast_to(rows[:, None, None], (frames, p, 2)).astype(np.float16) for c in CFG.cameras},
        state=np.repeat(rows[:, None], 7, axis=1).astype(np.float32), action=action.astype(np.float32),
        seeds=[None] * len(lengths),
    )


def reader(cache: ArrayCache, augment: bool = False) -> WindowReader:
    index = build_index([cache], {(0, e) for e in range(len(cache.episodes))}, CFG.sequence_length)
    text = [np.arange(len(cache.episodes))[:, None].repeat(CFG.text.context_length, 1)]
    return WindowReader([cache], index, CFG, text, NORM, augment=augment)


def test_windows_start_wherever_all_inputs_are_real():
    assert episode_windows(9, 4).tolist() == [0, 1, 2, 3, 4, 5]
    assert episode_windows(4, 4).tolist() == [0]
    assert episode_windows(2, 4).tolist() == [0]  # shorter than S: one window, padded


def test_labels_are_action_t_plus_j_zero_padded_with_the_gripper_repeated():
    actions = np.array([[i + 1] * 6 + [i % 2] for i in range(5)], np.float32)  # episode of 5
    labels = window_labels(actions, t0=1, s=4, k=3)
    assert labels.shape == (4, 3, 7)
    for t in range(4):
        for j in range(3):
            i = 1 + t + j
            want = actions[i] if i < 5 else np.r_[np.zeros(6), actions[4, 6]]
            np.testing.assert_array_equal(labels[t, j], want, err_msg=f"label[{t}, {j}]")
    assert labels[3, 2, 6] == actions[4, 6] == 0.0 and labels[2, 2, 6] == 0.0  # repeat, not zero-fill: check 1
    ones = window_labels(np.array([[0] * 6 + [1]] * 2, np.float32), t0=0, s=4, k=3)
    assert (ones[..., 6] == 1).all() and (ones[1:, :, :6] == 0).all() and (ones[0, 1:, :6] == 0).all()


def test_a_sample_reads_the_right_rows_pads_the_end_and_scales_actions():
    cache = numbered_cache([3, 6])  # episode 1 is rows 3..8
    rd = reader(cache)
    assert len(rd) == 1 + 3  # episode 0 (short): one window; episode 1: t0 = 0, 1, 2
    sample = rd.read(3)  # episode 1, t0 = 2: inputs rows 5..8, lookahead rows 9, 10, 11 -> padded to 8
    rows = [5, 6, 7, 8, 8, 8, 8]
    for cam in CFG.cameras:
        assert sample["images"][cam][:, 0, 0, 0].tolist() == rows
        assert sample["depth"][cam][:, 0, 0].tolist() == rows[3:]  # future depth: frame t + 3
        assert sample["tracks"][cam][:, 0, 0].tolist() == rows[:4]  # tracks of the current frame
    assert sample["state"][:, 0].tolist() == rows[:4]
    assert sample["text_ids"][0] == 1
    labels = sample["actions"] * SCALE  # back to robot units (none of these is clipped)
    np.testing.assert_allclose(labels[0, :, 0], [0.006, 0.007, 0.008], rtol=1e-6)
    np.testing.assert_allclose(labels[2, :, 0], [0.008, 0.009, 0.0], rtol=1e-6)  # row 9 is past the end: zero
    np.testing.assert_allclose(sample["actions"][0, 0, :6], [0.006 / 0.02] * 3 + [0.006 / 0.05] * 3, rtol=1e-6)
    assert labels[3, :, 6].tolist() == [0.0, 0.0, 0.0]  # row 8's gripper (8 % 2) repeated
    cache.action[:, :6] *= 10  # up to 9 cm per step: beyond the robot's 2 cm, clipped to the executable +-1
    assert np.abs(rd.read(3)["actions"][..., :6]).max() == 1.0
    short = rd.read(0)  # episode 0 has 3 frames < S: the last one repeats
    assert short["images"]["static"][:, 0, 0, 0].tolist() == [0, 1, 2, 2, 2, 2, 2]


def test_train_batch_splits_inputs_and_t_plus_3_targets():
    rd = reader(numbered_cache([8]))
    batch = to_train_batch(collate([rd.read(i) for i in range(2)]), CFG, torch.device("cpu"))
    s = CFG.sequence_length
    assert batch.images["static"].shape == (2, s, 3, 64, 64)
    assert batch.actions.shape == (2, s, 3, 7) and batch.future_depth["wrist"].shape == (2, s, 1, 64, 64)
    torch.testing.assert_close(batch.future_images["static"][0, 0], batch.images["static"][0, 3])


def test_split_is_by_episode_seeded_and_keeps_every_task_on_both_sides():
    caches = [fake_cache(CFG, [6] * 10), fake_cache(CFG, [6] * 4)]
    train, val = split_episodes(caches, 0.2, seed=3)
    assert not train & val and len(train | val) == 14
    assert {d for d, _ in val} == {0, 1} and {d for d, _ in train} == {0, 1}
    assert sum(d == 0 for d, _ in val) == 2
    assert split_episodes(caches, 0.2, seed=3) == (train, val)
    assert split_episodes(caches, 0.2, seed=4) != (train, val)
    index = build_index(caches, val, CFG.sequence_length)
    assert set(zip(index.dataset.tolist(), index.episode.tolist(), strict=True)) == val  # no val episode trains


def test_one_process_accumulating_reads_what_two_ranks_read():
    one = list(WindowBatches(50, Shard(micro_batch=2, accumulation=2), seed=1, start=0, stop=6))
    r0 = list(WindowBatches(50, Shard(micro_batch=2, rank=0, world=2), seed=1, start=0, stop=6))
    r1 = list(WindowBatches(50, Shard(micro_batch=2, rank=1, world=2), seed=1, start=0, stop=6))
    assert one[0::2] == r0 and one[1::2] == r1
    resumed = list(WindowBatches(50, Shard(micro_batch=2, accumulation=2), seed=1, start=3, stop=6))
    assert resumed == one[6:]  # the data position is the step
    epoch = [w for b in one[:24] for w, _ in b] if len(one) >= 24 else None
    assert epoch is None or len(set(epoch)) == len(epoch)


def released_shift(x: torch.Tensor, pad: int, shift: torch.Tensor) -> torch.Tensor:
    """The released RandomShiftsAug (replicate pad, then grid_sample) at given integer shifts (n, 2) = (dx, dy)."""
    n, _, h, _ = x.shape
    x = F.pad(x, (pad,) * 4, "replicate")
    eps = 1.0 / (h + 2 * pad)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad, dtype=x.dtype)[:h]
    arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    base = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
    grid = base + shift[:, None, None, :].to(x.dtype) * 2.0 / (h + 2 * pad)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def test_integer_crop_equals_the_released_random_shift():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    shifts = rng.integers(0, 2 * 3 + 1, (5, 2))  # (dy, dx)
    ours = shift_crop(frames, 3, shifts)
    ref = released_shift(torch.from_numpy(frames).permute(0, 3, 1, 2).double(), 3,
                         torch.from_numpy(shifts[:, ::-1].copy()))
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_shift_pads_scale_with_the_image_and_augmentation_is_seeded():
    assert shift_pads(CFG) == {"static": 3, "wrist": 1}
    assert shift_pads(preset("paper-calvin")) == {"static": 10, "wrist": 4}
    rd = reader(fake_cache(CFG, [10, 10]), augment=True)
    a, b, c = rd.read(1, (0, 5, 1)), rd.read(1, (0, 5, 1)), rd.read(1, (0, 5, 2))
    assert np.array_equal(a["images"]["static"], b["images"]["static"])
    assert not np.array_equal(a["images"]["static"], c["images"]["static"])


@pytest.mark.parametrize("missing", ["depth", "tracks"])
def test_targets_are_read_only_when_every_dataset_has_them(missing):
    caches = [fake_cache(CFG, [8]), fake_cache(CFG, [8], **{missing: False})]
    index = build_index(caches, {(0, 0), (1, 0)}, CFG.sequence_length)
    text = [np.zeros((1, CFG.text.context_length), np.int64)] * 2
    sample = WindowReader(caches, index, CFG, text, NORM, augment=False).read(0)
    assert missing not in sample and ({"depth", "tracks"} - {missing}) <= set(sample)
