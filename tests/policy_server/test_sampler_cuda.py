"""The CUDA-graph sampler against the eager one on a GPU: same noise, same chunk; bf16 graphs; batch sizes;
the engine's default. Skipped where torch sees no CUDA device (the CPU half of this code is test_sampler.py)."""

from __future__ import annotations

import pytest
import torch

from policy_server.model.action_head import ActionHead
from policy_server.model.config import ModelConfig, preset
from policy_server.serving.sampler_graph import GraphedSampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA graphs need a CUDA device; torch sees none here")

CUDA = torch.device("cuda")


def _head(cfg: ModelConfig) -> ActionHead:
    torch.manual_seed(0)
    head = ActionHead(cfg.backbone.hidden, cfg.action.chunk, cfg.action.dim, cfg.action_head).to(CUDA).eval()
    torch.nn.init.normal_(head.net.final_layer.linear.weight, std=0.02)
    return head


def _inputs(cfg: ModelConfig, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, cfg.action.chunk, cfg.backbone.hidden, generator=g)
    return cond.to(CUDA), torch.randn(batch, cfg.action.chunk, cfg.action.dim, generator=g).to(CUDA)


@pytest.mark.parametrize("name", ["tiny", "paper-calvin"])
def test_fp32_graph_replays_the_eager_sampler(name):
    """fp32, same noise: graph and eager launch the same kernels on the same shapes; 1e-5 of the output's scale
    leaves room for a GEMM algorithm chosen differently under capture (seen on CPU: the paths are exact)."""
    cfg = preset(name)
    head = _head(cfg)
    graphed = GraphedSampler(head)
    with torch.inference_mode():
        for batch in (1, 3, 1):
            for seed in (1, 2):
                cond, noise = _inputs(cfg, batch, seed)
                eager, replayed = head.denoise(cond, noise), graphed(cond, noise)
                assert (replayed - eager).abs().max() <= 1e-5 * eager.abs().max()
    assert graphed.prepared == 2  # one graph per batch size


def test_bf16_graph_replays_the_eager_sampler_under_autocast():
    """Captured under the engine's bf16 autocast, after eager work in the same context had cached bf16 weights:
    within 1% of the scale of eager bf16, and every later replay gives the same chunk, in that context and after
    it closed and its cached casts' memory went to other tensors (a graph that had read them would differ)."""
    cfg = preset("paper-calvin")
    head = _head(cfg)
    graphed = GraphedSampler(head)
    cond, noise = _inputs(cfg, 2, 1)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = head.denoise(cond, noise)
        first = graphed(cond, noise)
        head.denoise(cond, noise)  # eager casts made in the same autocast context as the graph's capture
        second = graphed(cond, noise)
    churn = [torch.full((1 << 20,), float(i), device=CUDA) for i in range(64)]  # reuse freed memory
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        third = graphed(cond, noise)
    del churn
    scale = eager.abs().max()
    assert (first - eager).abs().max() <= 0.01 * scale
    assert torch.equal(first, second) and torch.equal(first, third)


def test_a_result_is_not_overwritten_by_the_next_replay():
    cfg = preset("tiny")
    graphed = GraphedSampler(_head(cfg))
    a = graphed(*_inputs(cfg, 1, 1))
    kept = a.clone()
    b = graphed(*_inputs(cfg, 1, 2))
    assert torch.equal(a, kept) and not torch.equal(a, b)


def test_engine_captures_by_default_on_cuda():
    from policy_server.model.dreamvla import DreamVLA
    from policy_server.model.text import build_tokenizer
    from policy_server.serving.engine import PolicyEngine

    cfg = preset("tiny")
    model = DreamVLA(cfg, with_decoders=False, load_pretrained=False)
    engine = PolicyEngine(model, None, build_tokenizer(cfg.text, None), device="cuda")
    assert engine.sampler_graphs and isinstance(model.action_head.denoiser, GraphedSampler)
    eager = PolicyEngine(model, None, build_tokenizer(cfg.text, None), device="cuda", sampler_graphs=False)
    assert not eager.sampler_graphs and model.action_head.denoiser is None
