"""Image side of the tokenizer: CLIP-style preprocessing, the MAE ViT encoder, the Perceiver resampler.

Parameter names follow the MAE release (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N`,
`norm`) and Flamingo's resampler, so that official weights load with a name map and no surgery.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from policy_server.model.config import ResamplerConfig, VisionConfig
from policy_server.model.layers import Block, sincos_2d

# CLIP's normalisation: the released code feeds MAE with CLIP-preprocessed images.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def crop_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized h, resized w, top, left) of the short-side resize and centre crop to `size`: one geometry for the
    images here and for the depth targets of training (nearest-neighbour, one channel, resized elsewhere)."""
    if (height, width) == (size, size):
        return size, size, 0, 0
    scale = size / min(height, width)
    nh, nw = max(size, round(height * scale)), max(size, round(width * scale))
    return nh, nw, (nh - size) // 2, (nw - size) // 2


def preprocess_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, size, size): bicubic short-side resize, centre crop, CLIP norm."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {tuple(images.shape)} {images.dtype}")
    x = images.permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        nh, nw, top, left = crop_box(h, w, size)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        x = x[..., top : top + size, left : left + size]
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, 3, R, R) -> (N, P, D)


class VisionEncoder(nn.Module):
    """MAE ViT encoder (mask ratio 0): image -> (CLS (N, D), patches (N, P, D))."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        # Fixed sin-cos table with a zero CLS row; a persistent buffer so MAE's saved table overrides it.
        pos = torch.cat([torch.zeros(1, cfg.width), sincos_2d(cfg.width, cfg.grid)])
        self.register_buffer("pos_embed", pos.unsqueeze(0))  # (1, 1+P, D)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(x) + self.pos_embed[:, 1:]  # (N, P, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1+P, D)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 0], x[:, 1:]


class PerceiverAttention(nn.Module):
    """Latents attend to [media; latents] (Flamingo); no biases on the projections."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        b = media.shape[0]
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = self.to_q(latents).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (N, h, Q, dh)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)  # (N, P+Q, inner) each
        k = k.view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # (N, h, Q, dh)
        return self.to_out(y.transpose(1, 2).reshape(b, -1, self.heads * self.head_dim))


class PerceiverResampler(nn.Module):
    """(N, P, D) patch tokens -> (N, Q, D) latents; shared by both views."""

    def __init__(self, dim: int, cfg: ResamplerConfig) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_queries, dim))
        inner = dim * cfg.ff_mult
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, cfg.heads, cfg.head_dim),
                nn.Sequential(
                    nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False),
                ),
            ])
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)  # (N, Q, D)
        for attn, ff in self.layers:
            latents = attn(media, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


def read_mae_encoder(path: str | Path) -> dict[str, torch.Tensor]:
    """Encoder tensors of an MAE release file (`mae_pretrain_vit_base.pth`); its unused decoder is dropped."""
    from policy_server.model.text import MissingWeightsError

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"MAE ViT-B/16 weights not found at {str(path)!r}: download mae_pretrain_vit_base.pth "
            "(facebookresearch/mae, 'ViT-Base' pretrained checkpoint) and pass its path"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} cannot be read as a weights-only torch file: {exc}") from exc
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no MAE state dict (expected a dict with a 'model' entry)")
    return {k: v for k, v in state.items() if not k.startswith(MAE_DECODER_PREFIXES)}


def load_mae_encoder(encoder: VisionEncoder, path: str | Path) -> None:
    """Load MAE weights into `encoder`, refusing files whose encoder keys or shapes do not fit."""
    state = read_mae_encoder(path)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the ViT encoder: missing {missing[:5]}, unexpected {unexpected[:5]}")
