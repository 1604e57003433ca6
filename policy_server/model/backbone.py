"""The GPT-2-shaped backbone: 24 pre-LN blocks, no token/position embeddings, no causal mask of its own.

Names follow HF GPT-2 (`h.N.ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`,
`ln_f`) but the projections are `nn.Linear` ([out, in]); the official importer transposes GPT-2's
`Conv1D` ([in, out]) weights at the boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from policy_server.model.config import BackboneConfig


class CausalFreeAttention(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.c_attn = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.c_proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.c_attn(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d/h)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, n, d)))


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Backbone(nn.Module):
    """(B, L, H) tokens + (L, L) bool mask -> (B, L, H)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=1e-5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        for block in self.h:
            x = block(x, mask)
        return self.ln_f(x)
