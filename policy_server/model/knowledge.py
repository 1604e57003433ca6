"""World-knowledge decoders and their losses (training only; serving never builds these).

Each decoder turns one view's <dream> query outputs for one modality into a dense prediction of
the frame `future_steps` ahead, MAE-decoder style: projected queries + mask tokens + fixed
positions -> ViT blocks -> per-token linear prediction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from policy_server.model.config import DecoderConfig, LossConfig, ModelConfig
from policy_server.model.layers import Block, sincos_2d


def decoder_geometry(cfg: ModelConfig, modality: str) -> tuple[int, int]:
    """(mask tokens N, output width per token) of a modality's decoder."""
    p, n = cfg.vision.patch_size, cfg.vision.num_patches
    return {
        "dynamic": (n, p * p * 3),
        "depth": (n, p * p),
        "sam": (cfg.decoder.sam_grid**2, cfg.decoder.sam_dim),
        "dino": (cfg.decoder.dino_grid**2, cfg.decoder.dino_dim),
    }[modality]


class KnowledgeDecoder(nn.Module):
    """(M, G, H) query outputs of one view -> (M, N, out) predictions for the N target tokens."""

    def __init__(self, hidden: int, queries: int, targets: int, out_dim: int, cfg: DecoderConfig,
                 *, sincos: bool) -> None:
        super().__init__()
        self.queries = queries
        self.obs_pred_projector = nn.Linear(hidden, hidden)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.blocks = nn.ModuleList(Block(hidden, cfg.heads, cfg.mlp_ratio, eps=1e-5) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(hidden)  # eps 1e-5 here and in the blocks: timm Block with nn.LayerNorm
        self.pred = nn.Linear(hidden, out_dim)
        pos = torch.zeros(queries + targets, hidden)
        if sincos:
            pos = torch.cat([sincos_2d(hidden, math.isqrt(queries)), sincos_2d(hidden, math.isqrt(targets))])
            nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("position_embedding", pos.unsqueeze(0), persistent=False)  # (1, G+N, H)

    def forward(self, query_out: torch.Tensor) -> torch.Tensor:
        m = query_out.shape[0]
        n = self.position_embedding.shape[1] - self.queries
        x = torch.cat([self.obs_pred_projector(query_out), self.mask_token.expand(m, n, -1)], dim=1)
        x = x + self.position_embedding  # (M, G+N, H)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x)[:, self.queries :])  # (M, N, out)


def build_decoders(cfg: ModelConfig) -> nn.ModuleDict:
    decoders = {}
    for modality in cfg.dream_order:
        targets, out_dim = decoder_geometry(cfg, modality)
        sincos = modality != "sam" or cfg.decoder.sam_sincos_positions
        decoders[modality] = KnowledgeDecoder(
            cfg.backbone.hidden, cfg.dream_queries_per_view, targets, out_dim, cfg.decoder, sincos=sincos,
        )
    return nn.ModuleDict(decoders)


# --------------------------------------------------------------------------------------- targets


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(M, C, R, R) -> (M, (R/p)^2, p*p*C), row-major patches, MAE's channel-last order inside a patch."""
    m, c, r, _ = images.shape
    g = r // patch
    x = images.reshape(m, c, g, patch, g, patch)
    return torch.einsum("mchpwq->mhwpqc", x).reshape(m, g * g, patch * patch * c)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """Inverse of `patchify`: (M, N, p*p*C) -> (M, C, R, R)."""
    m, n, _ = tokens.shape
    g = math.isqrt(n)
    x = tokens.reshape(m, g, g, patch, patch, channels)
    return torch.einsum("mhwpqc->mchpwq", x).reshape(m, channels, g * patch, g * patch)


def normalized_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """MAE norm-pix targets: every patch standardised by its own mean and variance."""
    x = patchify(images, patch)
    mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
    return (x - mean) / (var + 1e-6).sqrt()


def flow_motion_mask(tracks: torch.Tensor, grid: int, threshold_px: float, dilate: bool) -> torch.Tensor:
    """Point displacements on a (2*grid)^2 lattice (M, 4*grid^2, 2) -> (M, grid^2) {0,1} dynamic-patch mask.

    As the released code: 2x2 average pool to the patch grid, L2 norm, > threshold, 3x3 dilation
    on the static view only.
    """
    m = tracks.shape[0]
    x = tracks.reshape(m, 2 * grid, 2 * grid, 2).permute(0, 3, 1, 2)  # (M, 2, 2g, 2g)
    moving = (F.avg_pool2d(x, 2).norm(dim=1, keepdim=True) > threshold_px).float()  # (M, 1, g, g)
    if dilate:
        moving = F.max_pool2d(moving, 3, stride=1, padding=1)
    return moving.reshape(m, grid * grid)


# ---------------------------------------------------------------------------------------- losses


def dynamic_region_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked MSE averaged over all patches (not over the masked area), as the released code."""
    if mask is not None:
        pred, target = pred * mask[..., None], target * mask[..., None]
    return F.mse_loss(pred, target)


def depth_metres(pred: torch.Tensor, cfg: DecoderConfig) -> torch.Tensor:
    """The depth decoder's raw output -> depth in metres, as the loss and a dream picture read it."""
    return F.softplus(pred) if cfg.depth_activation == "softplus" else F.relu(pred)


def depth_loss(pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """pred/target (M, 1, R, R) in metres; SiLog (code) or per-image scale-normalised MSE (paper).

    Only pixels with a measurement count: a D415 (and our recordings) write 0 where it has no depth, and
    log(0 + 1e-6) there would teach the head holes. A batch without one valid pixel contributes zero."""
    valid = (target > 0) & torch.isfinite(target)  # (M, 1, R, R)
    if not valid.any():
        return pred.sum() * 0.0
    if cfg.depth_loss == "silog":
        # Holes are set to 1 in both maps (g = 0 there) rather than gathered out: boolean indexing (nonzero +
        # index, forward and backward) cost ~4x the whole loss on CPU (`dv-bench train --profile`).
        n = valid.sum()
        g = torch.log(torch.where(valid, target, 1.0) + 1e-6) - torch.log(torch.where(valid, pred, 1.0) + 1e-6)
        return torch.sqrt((g**2).sum() / n - cfg.silog_lambda * (g.sum() / n) ** 2)
    w = valid.to(pred.dtype)
    per_image = lambda d: (d * w).sum(dim=(1, 2, 3), keepdim=True) / w.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)  # noqa: E731
    scale = lambda d: d / per_image(d).clamp_min(1e-6)  # noqa: E731
    return F.mse_loss(scale(pred)[valid], scale(torch.where(valid, target, 0.0))[valid])


def semantic_loss(pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """pred/target (M, N, C) features; 1 - cosine per token (code) or InfoNCE over positions (paper).

    In the InfoNCE variant the positive is the target at the same position and the negatives are
    the target features at every other position of the same image (spatially shifted features).
    """
    if cfg.semantic_loss == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).transpose(1, 2) / cfg.infonce_temperature
    labels = torch.arange(pred.shape[1], device=pred.device).expand(pred.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())
