"""The FlexAttention serving path: the same boolean table as a block mask, and the same outputs as SDPA.

On CUDA the path runs compiled (one fused kernel that skips empty blocks); on CPU flex_attention runs its eager
implementation, which is what these tests compare with SDPA. What CPU cannot show is the compiled kernel's
speed: `dv-bench model --device cuda` times it (variant `cached+flex`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy_server.model.attention_mask import (
    build_attention_mask,
    flex_block_mask,
    prune_attention_mask,
    serving_token_index,
    step_layout,
)
from policy_server.model.config import preset
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.text import build_tokenizer
from policy_server.serving.engine import PolicyEngine

pytest.importorskip("torch.nn.attention.flex_attention")


def _pruned_table(config: str, steps: int) -> torch.Tensor:
    cfg = preset(config)
    layout = step_layout(cfg.context_tokens, [(m, cfg.dream_group_tokens) for m in cfg.dream_order], cfg.action.chunk)
    t = cfg.tokens_per_step
    return prune_attention_mask(build_attention_mask(steps, layout, cfg.attention)[: steps * t, : steps * t],
                                serving_token_index(steps, cfg.context_tokens, t))


@pytest.mark.parametrize(("config", "steps"), [("tiny", 4), ("tiny", 2), ("paper-calvin", 10), ("paper-real", 3)])
@pytest.mark.parametrize("block", [16, 128])
def test_block_mask_allows_exactly_the_tables_pairs(config, steps, block):
    table = _pruned_table(config, steps)
    mask = flex_block_mask(table, block)
    n = table.shape[0]
    idx = torch.arange(n)
    zero = torch.zeros((), dtype=torch.long)
    assert torch.equal(mask.mask_mod(zero, zero, idx[:, None], idx[None, :]), table)
    # Blocks the kernel visits (partial or full) are exactly the blocks holding an allowed pair.
    blocks = -(-n // block)
    padded = torch.zeros(blocks * block, blocks * block, dtype=torch.bool)
    padded[:n, :n] = table
    occupied = padded.view(blocks, block, blocks, block).any(dim=3).any(dim=1)
    assert torch.equal(mask.to_dense()[0, 0].bool(), occupied)


def _engine(cfg, **kwargs) -> PolicyEngine:
    torch.manual_seed(0)
    model = DreamVLA(cfg, with_decoders=False, load_pretrained=False)
    torch.nn.init.normal_(model.action_head.net.final_layer.linear.weight, std=0.02)
    return PolicyEngine(model, None, build_tokenizer(cfg.text, None), **kwargs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_flex_steps_equal_sdpa_steps(tiny_cfg, precision):
    """From the first frame to past a full window; fp32 to float rounding (~2e-7 of the scale measured),
    bf16 within 1% of the action scale (8-bit mantissa roundings that the two kernels order differently)."""
    sdpa, flex = _engine(tiny_cfg, precision=precision), _engine(tiny_cfg, precision=precision, attention="flex")
    assert sdpa.attention == "sdpa"  # the fused-kernel path is opt-in
    rng = np.random.default_rng(0)
    histories = {e: e.start_episode("pick up the bottle") for e in (sdpa, flex)}
    tolerance = {"fp32": 1e-6, "bf16": 0.01}[precision]
    for i in range(tiny_cfg.sequence_length + 1):
        obs = _observation(tiny_cfg, rng, i)
        noise = torch.randn(1, 3, 7, generator=torch.Generator().manual_seed(i))
        reference = sdpa.step(histories[sdpa], obs, noise=noise)
        got = flex.step(histories[flex], obs, noise=noise)
        np.testing.assert_allclose(got, reference, rtol=0, atol=tolerance * np.abs(reference).max())
    assert {key[1] for key in flex.model._serving_masks} == {"flex"}


def _observation(cfg, rng: np.random.Generator, i: int):
    from dreamvla_client.protocol import WireObservation

    return WireObservation(images={c: rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for c in cfg.cameras},
                           state=np.r_[rng.normal(size=6), float(i % 2)].astype(np.float32))


def test_flex_is_refused_where_it_cannot_serve(tiny_cfg):
    model = DreamVLA(tiny_cfg.model_copy(update={"backbone": tiny_cfg.backbone.model_copy(update={"dropout": 0.1})}),
                     with_decoders=False, load_pretrained=False)
    with pytest.raises(ValueError, match="flex.*pruned sequence only"):
        PolicyEngine(model, None, build_tokenizer(tiny_cfg.text, None), prune=False, attention="flex")
    model.train()  # flex_attention has no attention dropout: training stays on SDPA
    text, frames = torch.randn(1, 64), torch.randn(1, 2, tiny_cfg.context_tokens - 1, 64)
    with pytest.raises(ValueError, match="flex attention is a serving path"):
        model.run_backbone_newest(text, frames, attention="flex")
    with pytest.raises(ValueError, match="unknown attention 'xla'"):
        model.serving_mask(2, "xla")  # type: ignore[arg-type]
