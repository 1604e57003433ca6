"""Knowledge-decoder targets and losses: the released code's definitions and the paper's variants."""

from __future__ import annotations

import pytest
import torch

from policy_server.model.config import DecoderConfig, LossConfig, preset
from policy_server.model.knowledge import (
    depth_loss,
    depth_metres,
    dynamic_region_loss,
    flow_motion_mask,
    normalized_patches,
    patchify,
    semantic_loss,
    unpatchify,
)


def test_patchify_round_trip_and_order():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tokens = patchify(img, 4)
    assert tokens.shape == (2, 4, 48)
    assert torch.equal(unpatchify(tokens, 4, 3), img)
    assert torch.equal(tokens[0, 1, :3], img[0, :, 0, 4])  # patch 1 is top-right; channels last inside


def test_normalized_patches_have_zero_mean_unit_variance():
    x = normalized_patches(torch.randn(1, 3, 16, 16) * 5 + 2, 8)
    assert torch.allclose(x.mean(-1), torch.zeros(1, 4), atol=1e-5)
    assert torch.allclose(x.var(-1), torch.ones(1, 4), atol=1e-3)


def test_flow_mask_thresholds_and_dilates_static_view_only():
    grid = 4
    tracks = torch.zeros(1, (2 * grid) ** 2, 2)
    lattice = tracks.view(1, 2 * grid, 2 * grid, 2)
    lattice[0, 2:4, 2:4] = torch.tensor([3.0, 0.0])  # one patch (row 1, col 1) moves 3 px
    lattice[0, 6, 6] = torch.tensor([1.5, 0.0])  # a quarter of patch (3, 3) moves: mean 0.375 px
    static = flow_motion_mask(tracks, grid, 1.0, dilate=True).view(grid, grid)
    wrist = flow_motion_mask(tracks, grid, 1.0, dilate=False).view(grid, grid)
    assert wrist.sum() == 1 and wrist[1, 1] == 1
    assert static.sum() == 9 and static[0:3, 0:3].all()


def test_dynamic_loss_ignores_static_patches_and_averages_over_all():
    pred, target = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert dynamic_region_loss(pred, target, mask).item() == pytest.approx(0.25)
    assert dynamic_region_loss(pred, target, None).item() == pytest.approx(1.0)


def test_silog_is_zero_for_exact_depth_and_scale_variant_ignores_global_scale():
    depth = torch.rand(2, 1, 8, 8) + 0.5
    assert depth_loss(depth, depth, LossConfig()).item() == pytest.approx(0.0, abs=1e-3)
    paper = LossConfig(depth_loss="scale_normalized_mse")
    assert depth_loss(depth * 3.0, depth, paper).item() == pytest.approx(0.0, abs=1e-10)
    assert depth_loss(depth.flip(-1) * 3.0, depth, paper).item() > 1e-3


def test_semantic_losses_prefer_the_right_position():
    target = torch.randn(2, 9, 16)
    shuffled = target[:, torch.roll(torch.arange(9), 1)]  # every token moved to a neighbour position
    for cfg in (LossConfig(), LossConfig(semantic_loss="infonce", infonce_temperature=0.1)):
        assert semantic_loss(target, target, cfg) < semantic_loss(shuffled, target, cfg)
    assert semantic_loss(target, target, LossConfig()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("variant", ["silog", "scale_normalized_mse"])
def test_depth_holes_are_masked(variant):
    """0 is 'no measurement' on a D415: whatever the head predicts there changes nothing, and the loss is finite."""
    cfg = LossConfig(depth_loss=variant)
    target = torch.rand(2, 1, 8, 8) + 0.5
    target[:, :, :3] = 0.0  # three rows without depth
    pred = target.clone()
    pred[:, :, :3] = torch.rand(2, 1, 3, 8) * 5
    loss = depth_loss(pred, target, cfg)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-3)
    pred[:, :, 5] *= 2.0  # a wrong measured pixel still counts
    assert depth_loss(pred, target, cfg).item() > 1e-3
    empty = depth_loss(pred.requires_grad_(), torch.zeros_like(target), cfg)
    assert empty.item() == 0.0 and empty.requires_grad  # no valid pixel: no loss, and backward still works


def test_a_depth_pixel_predicted_below_zero_still_learns_under_softplus():
    """The released ReLU pins such a pixel at 0 (SiLog's log(1e-6)) with zero gradient; softplus does not."""
    target = torch.full((1, 1, 4, 4), 0.8)
    for activation, learns in (("relu", False), ("softplus", True)):
        raw = torch.full((1, 1, 4, 4), -0.5, requires_grad=True)
        loss = depth_loss(depth_metres(raw, DecoderConfig(depth_activation=activation)), target, LossConfig())
        loss.backward()
        assert bool(raw.grad.abs().sum() > 0) is learns, activation
    assert preset("tiny").decoder.depth_activation == "softplus"
    assert preset("paper-calvin").decoder.depth_activation == "relu"  # the released numbers stay released
