"""The state's normalisation: angles wrapped around their mean (a downward gripper's roll flips between +pi and
-pi), the same model input on the training and the serving path, and released checkpoints left as they were."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from train_fakes import fake_cache

from dreamvla_client.protocol import WireObservation
from policy_server.model.checkpoint import STATE_STD_FLOOR, Normalization, fit_state_normalization, save_checkpoint
from policy_server.model.dreamvla import DreamVLA
from policy_server.serving.engine import PolicyEngine
from policy_server.training.data import WindowReader, build_index

SCALE = [0.02] * 3 + [0.05] * 3 + [1.0]


def downward_states(n: int, seed: int = 0) -> np.ndarray:
    """A gripper pointing down, as the sim demos hold it: roll within 0.02 rad of pi, printed either side."""
    rng = np.random.default_rng(seed)
    roll = math.pi + rng.uniform(-0.02, 0.02, n)
    roll = (roll + math.pi) % (2 * math.pi) - math.pi  # as.euler("xyz") reports it: +3.13.. or -3.13..
    pos = np.c_[0.45 + rng.normal(0, 0.08, n), rng.normal(0, 0.09, n), 0.3 + rng.normal(0, 0.1, n)]
    return np.c_[pos, roll, np.zeros(n), rng.uniform(-0.3, 0.3, n), rng.integers(0, 2, n)].astype(np.float32)


def fitted(states: np.ndarray) -> Normalization:
    mean, std = fit_state_normalization(states)
    return Normalization(action_scale=SCALE, state_mean=mean, state_std=std)


def test_a_roll_flipping_sign_at_pi_becomes_one_continuous_input():
    states = downward_states(500)
    assert np.ptp(states[:, 3]) > 6  # the raw roll jumps by 2 pi
    norm = fitted(states)
    assert abs(abs(norm.state_mean[3]) - math.pi) < 0.01  # the circular mean, not the arithmetic ~0
    model_roll = norm.state_to_model(states)[:, 3]
    assert np.ptp(model_roll) * norm.state_std[3] < 0.041  # the 0.04 rad it really spans
    assert np.all(np.abs(norm.state_to_model(states)[:, :3]).mean(axis=0) < 1.5)  # positions in units of spread


def test_a_dimension_the_demos_never_moved_is_divided_by_its_floor():
    states = downward_states(200)
    norm = fitted(states)
    assert norm.state_std[4] == STATE_STD_FLOOR[4]  # pitch was exactly 0 in every demo
    wobble = states[:1].copy()
    wobble[0, 4] = 0.005  # 5 mrad at run time
    assert abs(norm.state_to_model(wobble)[0, 4]) == pytest.approx(0.1, abs=1e-5)


def test_the_gripper_entry_is_left_for_the_models_threshold():
    states = downward_states(100)
    assert np.array_equal(fitted(states).state_to_model(states)[:, 6], states[:, 6])


def test_without_statistics_the_state_enters_in_robot_units():
    states = downward_states(10)
    assert np.array_equal(Normalization(action_scale=SCALE).state_to_model(states), states)


@pytest.mark.parametrize("bad", [{"state_mean": [0.0] * 6}, {"state_mean": [0.0] * 7, "state_std": [1.0] * 7},
                                 {"state_mean": [0.0] * 6, "state_std": [1.0] * 5 + [0.0]}])
def test_inconsistent_statistics_are_refused(bad):
    with pytest.raises(ValidationError, match="state_"):
        Normalization(action_scale=SCALE, **bad)


def test_training_and_serving_feed_the_model_the_same_state(tiny_cfg, tmp_path):
    cache = fake_cache(tiny_cfg, [12])
    cache.state[:] = downward_states(12)
    norm = fitted(cache.state)
    torch.manual_seed(0)
    save_checkpoint(DreamVLA(tiny_cfg, with_decoders=False, load_pretrained=False), tmp_path / "ck", source="test",
                    normalization=norm)
    engine = PolicyEngine.from_checkpoint(tmp_path / "ck")
    index = build_index([cache], {(0, 0)}, tiny_cfg.sequence_length)
    text = [np.zeros((1, tiny_cfg.text.context_length), np.int64)]
    trained = WindowReader([cache], index, tiny_cfg, text, norm, augment=False).read(0)["state"]
    served, _ = engine._frame_inputs([
        WireObservation(images={c: cache.images[c][t] for c in tiny_cfg.cameras}, state=cache.state[t])
        for t in range(tiny_cfg.sequence_length)])
    assert np.array_equal(served.numpy(), trained)
    assert not np.allclose(trained, cache.state[: tiny_cfg.sequence_length])
