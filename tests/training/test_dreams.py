"""`dv-model dream`'s pictures: the right panels per camera from the decoders, and refusals that name the cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_fakes import fake_cache

from policy_server.model.checkpoint import CheckpointError, default_normalization, save_checkpoint
from policy_server.model.dreamvla import DreamVLA
from policy_server.training.dreams import TITLES, dream, load_dreamer, render


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(0)
    return DreamVLA(tiny_cfg, with_decoders=True, load_pretrained=False).eval()


def test_every_camera_gets_the_five_panels_and_holes_stay_black(model, tiny_cfg):
    cache = fake_cache(tiny_cfg, [12])
    cache.depth["static"][:, :8, :8] = 0  # a hole in the teacher's depth
    text = np.zeros((1, tiny_cfg.text.context_length), np.int64)
    d = dream(model, default_normalization(tiny_cfg), cache, text, 0, 2)  # a window shorter than S
    r = tiny_cfg.vision.image_size
    assert d.frame == 2 and list(d.panels) == list(tiny_cfg.cameras)
    for panels in d.panels.values():
        assert len(panels) == len(TITLES)
        assert all(p.shape == (r, r, 3) and p.dtype == np.uint8 for p in panels)
    teacher_depth = d.panels["static"][3]
    assert not teacher_depth[:8, :8].any() and teacher_depth[8:, 8:].any()
    assert np.array_equal(d.panels["static"][0], cache.images["static"][2])  # frame t is the frame itself
    picture = render(d, "test")
    assert picture.ndim == 3 and picture.shape[1] > 5 * r


def test_a_frame_outside_the_episode_is_refused(model, tiny_cfg):
    cache = fake_cache(tiny_cfg, [12])
    text = np.zeros((1, tiny_cfg.text.context_length), np.int64)
    with pytest.raises(ValueError, match="frames 0..11, not 12"):
        dream(model, default_normalization(tiny_cfg), cache, text, 0, 12)


def test_a_checkpoint_exported_without_decoders_is_refused(tiny_cfg, tmp_path):
    save_checkpoint(DreamVLA(tiny_cfg, with_decoders=False, load_pretrained=False), tmp_path / "ck", source="test")
    with pytest.raises(CheckpointError, match="no knowledge decoders"):
        load_dreamer(tmp_path / "ck")
