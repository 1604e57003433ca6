"""DreamVLA, top to bottom: tokenize each frame, lay out a window, run the backbone, read the heads.

Per timestep the backbone sees T = A + B tokens (see config.ModelConfig):
    A (context)  text (1) | state (1) | static latents (Q) | wrist latents (Q) | static CLS | wrist CLS
    B (queries)  <dream> groups, 2*K each, in DREAM_ORDER | <action> (3)
A frame's A tokens do not depend on where the frame sits in the window (the per-timestep
embedding is added afterwards), which is what makes the serving engine's history cache exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from policy_server.model.action_head import ActionHead
from policy_server.model.attention_mask import build_attention_mask, step_layout
from policy_server.model.backbone import Backbone, load_gpt2_weights
from policy_server.model.config import ModelConfig
from policy_server.model.knowledge import (
    build_decoders,
    depth_loss,
    dynamic_region_loss,
    flow_motion_mask,
    normalized_patches,
    semantic_loss,
    unpatchify,
)
from policy_server.model.text import TextEncoder
from policy_server.model.vision import PerceiverResampler, VisionEncoder, load_mae_encoder


@dataclass
class TrainBatch:
    """One training window. B batch, S timesteps, R image size, K chunk; targets are the frame t+3.

    images/future_images: {camera: (B, S, 3, R, R)} preprocessed; state (B, S, 7); actions (B, S, K, 7).
    Teacher targets are optional per modality; a modality without targets contributes no loss.
    """

    text_ids: torch.Tensor  # (B, L)
    images: dict[str, torch.Tensor]
    state: torch.Tensor
    actions: torch.Tensor
    future_images: dict[str, torch.Tensor] | None = None
    tracks: dict[str, torch.Tensor] | None = None  # (B, S, 4*g*g, 2) point displacements, pixels
    future_depth: dict[str, torch.Tensor] | None = None  # (B, S, 1, R, R) metres
    future_sam: dict[str, torch.Tensor] | None = None  # (B, S, N, C)
    future_dino: dict[str, torch.Tensor] | None = None  # (B, S, N, C)


class DreamVLA(nn.Module):
    def __init__(self, cfg: ModelConfig, *, with_decoders: bool, load_pretrained: bool) -> None:
        super().__init__()
        self.cfg = cfg
        h, dv = cfg.backbone.hidden, cfg.vision.width
        # ---- tokenizer: text, state, images
        self.text_encoder = TextEncoder(cfg.text, load_pretrained=load_pretrained)
        self.text_projector = nn.Linear(cfg.text.projection_dim, h)
        self.arm_state_encoder = nn.Linear(6, h)
        self.gripper_state_encoder = nn.Linear(2, h)
        self.state_projector = nn.Linear(2 * h, h)
        self.vision_encoder = VisionEncoder(cfg.vision)
        if load_pretrained and cfg.vision.pretrained is not None:
            load_mae_encoder(self.vision_encoder, cfg.vision.pretrained)
        self.perceiver_resampler = PerceiverResampler(dv, cfg.resampler)
        self.patch_projectors = nn.ModuleDict({c: nn.Linear(dv, h) for c in cfg.cameras})
        self.cls_projectors = nn.ModuleDict({c: nn.Linear(dv, h) for c in cfg.cameras})
        # ---- learnable queries (zero-initialised, shared by every timestep) and the time embedding
        per_modality = 2 * cfg.dream_queries_per_view
        self.dream_queries = nn.ParameterDict({m: nn.Parameter(torch.zeros(per_modality, h)) for m in cfg.dream_order})
        self.action_queries = nn.Parameter(torch.zeros(cfg.action.chunk, h))
        self.time_embedding = nn.Parameter(torch.randn(cfg.sequence_length, h) * 0.02)
        self.embedding_layer_norm = nn.LayerNorm(h)
        # ---- backbone and heads
        self.backbone = Backbone(cfg.backbone)
        if load_pretrained and cfg.backbone.pretrained is not None:
            load_gpt2_weights(self.backbone, cfg.backbone.pretrained)
        self.action_head = ActionHead(h, cfg.action.chunk, cfg.action.dim, cfg.action_head)
        self.decoders = build_decoders(cfg) if with_decoders else None
        layout = step_layout(cfg.context_tokens, [(m, per_modality) for m in cfg.dream_order], cfg.action.chunk)
        self.register_buffer("attention_mask", build_attention_mask(cfg.sequence_length, layout, cfg.attention),
                             persistent=False)  # (S*T, S*T) bool
        if cfg.vision.frozen:
            self.vision_encoder.requires_grad_(False)
        if cfg.text.frozen:
            self.text_encoder.requires_grad_(False)

    # ------------------------------------------------------------------------------ tokenizer

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, H) text token."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.text.frozen):
            feat = self.text_encoder(ids)
        return self.text_projector(feat)

    def encode_state(self, state: torch.Tensor) -> torch.Tensor:
        """(N, 7) [pose6, gripper 1=open/0=closed] -> (N, H); the gripper enters one-hot (closed, open)."""
        onehot = F.one_hot((state[:, 6] >= 0.5).long(), 2).to(state.dtype)
        arm, grip = self.arm_state_encoder(state[:, :6]), self.gripper_state_encoder(onehot)
        return self.state_projector(torch.cat([arm, grip], dim=-1))

    def encode_frame(self, state: torch.Tensor, images: dict[str, torch.Tensor]) -> torch.Tensor:
        """state (N, 7), images {camera: (N, 3, R, R)} -> the frame's A tokens minus text: (N, A-1, H)."""
        cams = self.cfg.cameras
        pixels = torch.cat([images[c] for c in cams])  # (2N, 3, R, R): both views in one encoder pass
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.vision.frozen):
            cls, patches = self.vision_encoder(pixels)  # (2N, Dv), (2N, P, Dv)
        latents = self.perceiver_resampler(patches).chunk(2)  # 2 x (N, Q, Dv)
        clss = cls.chunk(2)
        image_tokens = [self.patch_projectors[c](lat) for c, lat in zip(cams, latents, strict=True)]  # 2 x (N, Q, H)
        cls_tokens = [self.cls_projectors[c](x)[:, None] for c, x in zip(cams, clss, strict=True)]  # 2 x (N, 1, H)
        return torch.cat([self.encode_state(state)[:, None], *image_tokens, *cls_tokens], dim=1)

    # ------------------------------------------------------------------------------- backbone

    def run_backbone(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """text (B, H), frames (B, k, A-1, H), k <= S -> hidden states (B, k, T, H).

        Fewer than S frames is the start of an episode: under the block-causal mask this equals the
        released code's repeat-padding read at index k-1, without computing the padding.
        """
        b, k, _, h = frames.shape
        if k > self.cfg.sequence_length:
            raise ValueError(f"window of {k} frames exceeds sequence_length {self.cfg.sequence_length}")
        dreams = [self.dream_queries[m] for m in self.cfg.dream_order]  # ParameterDict sorts its keys
        queries = torch.cat([*dreams, self.action_queries])  # (T_B, H)
        x = torch.cat([
            text[:, None, None].expand(b, k, 1, h),
            frames,
            queries[None, None].expand(b, k, -1, -1).to(frames.dtype),
        ], dim=2)  # (B, k, T, H)
        x = self.embedding_layer_norm(x + self.time_embedding[:k, None])
        t = x.shape[2]
        y = self.backbone(x.reshape(b, k * t, h), self.attention_mask[: k * t, : k * t])
        return y.view(b, k, t, h)

    def query_outputs(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split the B part of (B, k, T, H) into {modality: (B, k, 2K, H)} and 'action': (B, k, 3, H)."""
        start, out = self.cfg.context_tokens, {}
        for m in self.cfg.dream_order:
            n = 2 * self.cfg.dream_queries_per_view
            out[m] = hidden[:, :, start : start + n]
            start += n
        out["action"] = hidden[:, :, start:]
        return out

    # ------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, text: torch.Tensor, frames: torch.Tensor, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """text (B, H), frames (B, k, A-1, H) -> chunk (B, 3, 7) for the newest frame, in model units."""
        cond = self.query_outputs(self.run_backbone(text, frames))["action"][:, -1]  # (B, 3, H)
        return self.action_head.sample(cond.float(), noise=noise, generator=generator)

    # ------------------------------------------------------------------------------- training

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Losses of one window batch; 'total' is the weighted sum the optimiser minimises."""
        cfg = self.cfg
        b, s = batch.state.shape[:2]
        flat = {c: batch.images[c].flatten(0, 1) for c in cfg.cameras}
        frames = self.encode_frame(batch.state.flatten(0, 1), flat).unflatten(0, (b, s))  # (B, S, A-1, H)
        outputs = self.query_outputs(self.run_backbone(self.encode_text(batch.text_ids), frames))
        losses = {"action": self.action_head.loss(outputs["action"].flatten(0, 1), batch.actions.flatten(0, 1))}
        if self.decoders is not None:
            losses |= self._knowledge_losses(outputs, batch)
        weights = {"action": cfg.loss.action, "dynamic": cfg.loss.dynamic, "depth": cfg.loss.depth,
                   "sam": cfg.loss.sam, "dino": cfg.loss.dino}
        losses["total"] = sum(weights[k] * v for k, v in losses.items())
        return losses

    def _knowledge_losses(self, outputs: dict[str, torch.Tensor], batch: TrainBatch) -> dict[str, torch.Tensor]:
        cfg, k, p = self.cfg, self.cfg.dream_queries_per_view, self.cfg.vision.patch_size
        targets = {"dynamic": batch.future_images, "depth": batch.future_depth, "sam": batch.future_sam,
                   "dino": batch.future_dino}
        losses = {}
        for m in cfg.dream_order:
            if targets[m] is None:
                continue
            per_view = []
            for i, cam in enumerate(cfg.cameras):
                pred = self.decoders[m](outputs[m][:, :, i * k : (i + 1) * k].flatten(0, 1))  # (B*S, N, out)
                target = targets[m][cam].flatten(0, 1)
                if m == "dynamic":
                    mask = None
                    if batch.tracks is not None:
                        mask = flow_motion_mask(batch.tracks[cam].flatten(0, 1), cfg.vision.grid,
                                                cfg.loss.flow_threshold_px, dilate=i == 0)
                    per_view.append(dynamic_region_loss(pred, normalized_patches(target, p), mask))
                elif m == "depth":
                    per_view.append(depth_loss(unpatchify(F.relu(pred), p, 1), target, cfg.loss))
                else:
                    per_view.append(semantic_loss(pred, target, cfg.loss))
            losses[m] = 0.5 * (per_view[0] + per_view[1])
        return losses
