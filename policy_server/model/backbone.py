"""The GPT-2-shaped backbone: 24 pre-LN blocks, no token/position embeddings, no causal mask of its own.

Names follow HF GPT-2 (`h.N.ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`,
`ln_f`) but the projections are `nn.Linear` ([out, in]); the official importer transposes GPT-2's
`Conv1D` ([in, out]) weights at the boundary.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Union

import torch
import torch.nn.functional as F
from torch import nn

from policy_server.model.config import BackboneConfig

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

AttentionMask = Union[torch.Tensor, "BlockMask"]  # a bool table for SDPA, or the same table as a BlockMask


class CausalFreeAttention(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.c_attn = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.c_proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.c_attn(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d/h)
        p = self.dropout if self.training else 0.0
        if isinstance(mask, torch.Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            if p:
                raise ValueError("flex attention is a serving path: it has no attention dropout (call .eval())")
            y = flex_attention(q, k, v, mask)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, n, d)))


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask) -> torch.Tensor:
    """FlexAttention under a block mask: compiled into one fused kernel on CUDA, the eager (unfused,
    numerically the same) implementation elsewhere, so the CPU tests run the same call.

    torch.compile's automatic dynamic shapes turn the second window length it sees into a symbolic
    one, so an episode's growing window costs two compilations, not one per length.
    """
    from torch.nn.attention import flex_attention as flex

    if q.is_cuda:
        return _compiled_flex()(q, k, v, block_mask=mask)
    with warnings.catch_warnings():  # the eager path warns that it is unfused, which on CPU is the point
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex.flex_attention(q, k, v, block_mask=mask)


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    """One compiled FlexAttention per process, built on first CUDA use (compiling costs seconds)."""
    from torch.nn.attention import flex_attention as flex

    return torch.compile(flex.flex_attention)


class FeedForward(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.hidden, 4 * cfg.hidden)
        self.c_proj = nn.Linear(4 * cfg.hidden, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's gelu_new


class GPT2Block(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden, eps=1e-5)
        self.attn = CausalFreeAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden, eps=1e-5)
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Backbone(nn.Module):
    """(B, L, H) tokens + (L, L) bool mask (or the same table as a FlexAttention BlockMask) -> (B, L, H)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=1e-5)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        x = self.drop(x)
        for block in self.h:
            x = block(x, mask)
        return self.ln_f(x)


# GPT-2 `Conv1D` weights are stored [in, out]; ours are nn.Linear [out, in].
CONV1D_WEIGHT = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")


def from_gpt2_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A GPT-2 transformer's block weights in our layout; its token/position embeddings and causal
    buffers are dropped (the backbone has neither: time embedding and structured mask replace them)."""
    keep = {k: v for k, v in state.items() if k.startswith(("h.", "ln_f.")) and not k.endswith((".attn.bias",
                                                                                                ".attn.masked_bias"))}
    return {k: v.t().contiguous() if CONV1D_WEIGHT.fullmatch(k) else v for k, v in keep.items()}


def load_gpt2_weights(backbone: Backbone, source: str) -> None:
    """Initialise the backbone from a local GPT-2 checkpoint whose widths match the config."""
    from transformers import GPT2Model

    from policy_server.model.text import MissingWeightsError

    try:
        gpt2 = GPT2Model.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        raise MissingWeightsError(f"GPT-2 weights not found at {source!r} (local path or Hugging Face cache): "
                                  "download e.g. 'gpt2-medium' and point backbone.pretrained at it") from exc
    try:
        backbone.load_state_dict(from_gpt2_layout(gpt2.state_dict()), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"GPT-2 at {source!r} does not fit the backbone config: {exc}") from exc

