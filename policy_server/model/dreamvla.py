"""DreamVLA, top to bottom: tokenize each frame, lay out a window, run the backbone, read the heads.

Shape letters (each has one meaning in this file):
    N  samples in a flat batch (in training, batch x timesteps flattened)
    B  batch: windows in a forward pass
    S  timesteps of a full window (cfg.sequence_length); W <= S frames present (an episode's start)
    V  camera views (len(cfg.cameras)), in cfg.cameras order; the first is the primary view
    R  image side in pixels; P patches per image; Dv vision width; H backbone width
    L  resampler latents per view (cfg.resampler.num_queries)
    G  <dream> queries per view per modality (cfg.dream_queries_per_view)
    K  action chunk length (cfg.action.chunk, 3); 7 the action dimension
    C  context tokens per timestep; U query tokens per timestep; T = C + U

Per timestep the backbone sees T tokens (see config.ModelConfig):
    C (context)  text (1) | state (1) | latents (L) per view | one CLS per view
    U (queries)  <dream> groups, V*G each, in DREAM_ORDER | <action> (K)
A frame's context tokens do not depend on where the frame sits in the window (the per-timestep
embedding is added afterwards), which is what makes the serving engine's history cache exact.
No token attends to an earlier timestep's queries, so serving (`run_backbone_newest`) keeps every
timestep's C context tokens and only the newest timestep's U queries: W*C + U tokens instead of W*T.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from policy_server.model.action_head import ActionHead
from policy_server.model.attention_mask import (
    build_attention_mask,
    flex_block_mask,
    prune_attention_mask,
    serving_token_index,
    step_layout,
)
from policy_server.model.backbone import AttentionMask, Backbone, load_gpt2_weights
from policy_server.model.config import ModelConfig
from policy_server.model.knowledge import (
    build_decoders,
    depth_loss,
    depth_metres,
    dynamic_region_loss,
    flow_motion_mask,
    normalized_patches,
    semantic_loss,
    unpatchify,
)
from policy_server.model.text import TextEncoder
from policy_server.model.vision import PerceiverResampler, VisionEncoder, load_mae_encoder

log = logging.getLogger(__name__)

# How the serving backbone attends: SDPA under the boolean table, or FlexAttention under the same table as a
# block mask (a path a fused GPU kernel can take; on CPU its eager form, for the equality tests).
Attention = Literal["sdpa", "flex"]


@dataclass
class TrainBatch:
    """One training window; targets are the frame t+3 (shape letters in the module docstring).

    images/future_images: {camera: (B, S, 3, R, R)} preprocessed; state (B, S, 7); actions (B, S, K, 7).
    Teacher targets are optional per modality; a modality without targets contributes no loss.
    """

    text_ids: torch.Tensor  # (B, L)
    images: dict[str, torch.Tensor]
    state: torch.Tensor
    actions: torch.Tensor
    future_images: dict[str, torch.Tensor] | None = None
    tracks: dict[str, torch.Tensor] | None = None  # (B, S, (2*grid)**2, 2) point displacements, pixels
    future_depth: dict[str, torch.Tensor] | None = None  # (B, S, 1, R, R) metres
    future_sam: dict[str, torch.Tensor] | None = None  # (B, S, N, C)
    future_dino: dict[str, torch.Tensor] | None = None  # (B, S, N, C)


class DreamVLA(nn.Module):
    def __init__(self, cfg: ModelConfig, *, with_decoders: bool, load_pretrained: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self._untaught: set[str] = set()  # modalities already warned about (no targets in a training batch)
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
        group = cfg.dream_group_tokens  # V*G
        self.dream_queries = nn.ParameterDict({m: nn.Parameter(torch.zeros(group, h)) for m in cfg.dream_order})
        self.action_queries = nn.Parameter(torch.zeros(cfg.action.chunk, h))
        self.time_embedding = nn.Parameter(torch.randn(cfg.sequence_length, h) * 0.02)
        self.embedding_layer_norm = nn.LayerNorm(h)
        # ---- backbone and heads
        self.backbone = Backbone(cfg.backbone)
        if load_pretrained and cfg.backbone.pretrained is not None:
            load_gpt2_weights(self.backbone, cfg.backbone.pretrained)
        self.action_head = ActionHead(h, cfg.action.chunk, cfg.action.dim, cfg.action_head)
        self.decoders = build_decoders(cfg) if with_decoders else None
        layout = step_layout(cfg.context_tokens, [(m, group) for m in cfg.dream_order], cfg.action.chunk)
        self.register_buffer("attention_mask", build_attention_mask(cfg.sequence_length, layout, cfg.attention),
                             persistent=False)  # (S*T, S*T) bool
        # serving_mask's cache: (window length, attention, device) -> (kept positions, their mask)
        self._serving_masks: dict[tuple[int, str, torch.device], tuple[torch.Tensor, AttentionMask]] = {}
        pretrained = {"text_encoder": load_pretrained and cfg.text.pretrained is not None,
                      "vision_encoder": load_pretrained and cfg.vision.pretrained is not None,
                      "backbone": load_pretrained and cfg.backbone.pretrained is not None}
        self._init_weights(skip={name for name, loaded in pretrained.items() if loaded})
        if cfg.vision.frozen:
            self.vision_encoder.requires_grad_(False)
        if cfg.text.frozen:
            self.text_encoder.requires_grad_(False)

    def _init_weights(self, skip: set[str]) -> None:
        """The released initialisation: Xavier-uniform for every Linear (backbone and DiT included), zero biases,
        unit LayerNorms, a null condition of std 0.02. It runs after the heads are built, so the DiT's final layer
        is not zero either, as released. Subtrees whose weights came from a pretrained file are left alone."""
        for name, module in self.named_modules():
            if name.split(".")[0] in skip:
                continue
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.action_head.net.z_embedder.uncondition, std=0.02)

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
        """state (N, 7), images {camera: (N, 3, R, R)} -> the frame's context tokens minus text: (N, C-1, H)."""
        cams, v = self.cfg.cameras, self.cfg.views
        pixels = torch.cat([images[c] for c in cams])  # (V*N, 3, R, R): every view in one encoder pass
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.vision.frozen):
            cls, patches = self.vision_encoder(pixels)  # (V*N, Dv), (V*N, P, Dv)
        latents = self.perceiver_resampler(patches).chunk(v)  # V x (N, L, Dv)
        clss = cls.chunk(v)  # V x (N, Dv)
        image_tokens = [self.patch_projectors[c](lat) for c, lat in zip(cams, latents, strict=True)]  # V x (N, L, H)
        cls_tokens = [self.cls_projectors[c](x)[:, None] for c, x in zip(cams, clss, strict=True)]  # V x (N, 1, H)
        return torch.cat([self.encode_state(state)[:, None], *image_tokens, *cls_tokens], dim=1)

    # ------------------------------------------------------------------------------- backbone

    def embed_window(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """text (B, H), frames (B, W, C-1, H), W <= S -> every token of the window, embedded: (B, W, T, H)."""
        b, w, _, h = frames.shape
        if w > self.cfg.sequence_length:
            raise ValueError(f"window of {w} frames exceeds sequence_length {self.cfg.sequence_length}")
        dreams = [self.dream_queries[m] for m in self.cfg.dream_order]  # ParameterDict sorts its keys
        queries = torch.cat([*dreams, self.action_queries])  # (U, H)
        x = torch.cat([
            text[:, None, None].expand(b, w, 1, h),
            frames,
            queries[None, None].expand(b, w, -1, -1).to(frames.dtype),
        ], dim=2)  # (B, W, T, H)
        return self.embedding_layer_norm(x + self.time_embedding[:w, None])

    def run_backbone(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """text (B, H), frames (B, W, C-1, H), W <= S -> hidden states of the whole window (B, W, T, H).

        Fewer than S frames is the start of an episode: under the block-causal mask this equals the
        released code's repeat-padding read at index W-1, without computing the padding.
        """
        x = self.embed_window(text, frames)
        b, w, t, h = x.shape
        y = self.backbone(x.reshape(b, w * t, h), self.attention_mask[: w * t, : w * t])
        return y.view(b, w, t, h)

    def run_backbone_newest(self, text: torch.Tensor, frames: torch.Tensor,
                            attention: Attention = "sdpa") -> torch.Tensor:
        """text (B, H), frames (B, W, C-1, H) -> hidden states of the newest timestep's queries (B, U, H).

        The serving sequence: every timestep's context tokens and the newest timestep's queries only (W*C + U
        tokens instead of W*T). No kept token attends to a dropped one (`prune_attention_mask` checks), so the
        outputs equal `run_backbone`'s up to float summation order. `attention="flex"` runs FlexAttention
        under the same table as a block mask.
        """
        keep, mask = self.serving_mask(frames.shape[1], attention)
        x = self.embed_window(text, frames).flatten(1, 2)[:, keep]  # (B, W*C + U, H)
        return self.backbone(x, mask)[:, -self.cfg.query_tokens :]

    def serving_mask(self, steps: int, attention: Attention = "sdpa") -> tuple[torch.Tensor, AttentionMask]:
        """(kept token positions, their mask) for a window of `steps` frames: built once per window length,
        attention kind and device, then reused by every step."""
        key = (steps, attention, self.attention_mask.device)
        if key not in self._serving_masks:
            t = self.cfg.tokens_per_step
            keep = serving_token_index(steps, self.cfg.context_tokens, t).to(self.attention_mask.device)
            table = prune_attention_mask(self.attention_mask[: steps * t, : steps * t], keep)
            if attention == "sdpa":
                self._serving_masks[key] = keep, table
            elif attention == "flex":
                self._serving_masks[key] = keep, flex_block_mask(table)
            else:
                raise ValueError(f"unknown attention {attention!r}; choose 'sdpa' or 'flex'")
        return self._serving_masks[key]

    def split_queries(self, queries: torch.Tensor) -> dict[str, torch.Tensor]:
        """Query outputs (..., U, H) -> {modality: (..., V*G, H)} and 'action': (..., K, H)."""
        start, out, n = 0, {}, self.cfg.dream_group_tokens
        for m in self.cfg.dream_order:
            out[m] = queries[..., start : start + n, :]
            start += n
        out["action"] = queries[..., start:, :]
        return out

    def query_outputs(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split the U part of (B, W, T, H) into {modality: (B, W, V*G, H)} and 'action': (B, W, K, H)."""
        return self.split_queries(hidden[:, :, self.cfg.context_tokens :])

    # ------------------------------------------------------------------------------ inference

    def action_condition(self, text: torch.Tensor, frames: torch.Tensor, *, prune: bool = True,
                         attention: Attention = "sdpa") -> torch.Tensor:
        """text (B, H), frames (B, W, C-1, H) -> the newest timestep's <action> outputs (B, K, H).

        `prune=False` runs the full window (every timestep's queries), as training does; kept for the
        equality tests and the benchmark.
        """
        if prune:
            return self.split_queries(self.run_backbone_newest(text, frames, attention))["action"]
        if attention != "sdpa":
            raise ValueError("flex attention serves the pruned sequence only (prune=True)")
        return self.query_outputs(self.run_backbone(text, frames))["action"][:, -1]

    @torch.no_grad()
    def predict(self, text: torch.Tensor, frames: torch.Tensor, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, *, prune: bool = True,
                attention: Attention = "sdpa") -> torch.Tensor:
        """text (B, H), frames (B, W, C-1, H) -> chunk (B, K, 7) for the newest frame, in model units."""
        cond = self.action_condition(text, frames, prune=prune, attention=attention)  # (B, K, H)
        return self.action_head.sample(cond.float(), noise=noise, generator=generator)

    # ------------------------------------------------------------------------------- training

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Losses of one window batch; 'total' is the weighted sum the optimiser minimises."""
        cfg = self.cfg
        b, s = batch.state.shape[:2]
        flat = {c: batch.images[c].flatten(0, 1) for c in cfg.cameras}
        frames = self.encode_frame(batch.state.flatten(0, 1), flat).unflatten(0, (b, s))  # (B, S, C-1, H)
        outputs = self.query_outputs(self.run_backbone(self.encode_text(batch.text_ids), frames))
        losses = {"action": self.action_head.loss(outputs["action"].flatten(0, 1), batch.actions.flatten(0, 1))}
        if self.decoders is not None:
            losses |= self._knowledge_losses(outputs, batch)
        weights = {"action": cfg.loss.action, "dynamic": cfg.loss.dynamic, "depth": cfg.loss.depth,
                   "sam": cfg.loss.sam, "dino": cfg.loss.dino}
        losses["total"] = sum(weights[k] * v for k, v in losses.items())
        return losses

    def _knowledge_losses(self, outputs: dict[str, torch.Tensor], batch: TrainBatch) -> dict[str, torch.Tensor]:
        cfg, g, p = self.cfg, self.cfg.dream_queries_per_view, self.cfg.vision.patch_size
        targets = {"dynamic": batch.future_images, "depth": batch.future_depth, "sam": batch.future_sam,
                   "dino": batch.future_dino}
        losses = {}
        for m in cfg.dream_order:
            if targets[m] is None:
                self._warn_untaught(m)
                continue
            per_view = []
            for i, cam in enumerate(cfg.cameras):
                pred = self.decoders[m](outputs[m][:, :, i * g : (i + 1) * g].flatten(0, 1))  # (B*S, targets, out)
                target = targets[m][cam].flatten(0, 1)
                if m == "dynamic":
                    mask = None
                    if batch.tracks is not None:
                        mask = flow_motion_mask(batch.tracks[cam].flatten(0, 1), cfg.vision.grid,
                                                cfg.loss.flow_threshold_px, dilate=i == 0)
                    per_view.append(dynamic_region_loss(pred, normalized_patches(target, p), mask))
                elif m == "depth":
                    per_view.append(depth_loss(unpatchify(depth_metres(pred, cfg.decoder), p, 1), target, cfg.loss))
                else:
                    per_view.append(semantic_loss(pred, target, cfg.loss))
            losses[m] = torch.stack(per_view).mean()  # the views weigh equally
        return losses

    def _warn_untaught(self, modality: str) -> None:
        """Queries whose loss is never computed still shape what <action> attends to; say so once per modality
        rather than train them silently (switch the modality off in `dream`, or give it a teacher)."""
        if modality not in self._untaught:
            self._untaught.add(modality)
            log.warning("<dream> queries for %r are built but the batch has no %r targets: their loss is never "
                        "computed (remove %r from the config's `dream`, or supply its teacher)", modality, modality,
                        modality)
