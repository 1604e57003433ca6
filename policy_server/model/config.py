"""Model configuration: one validated pydantic tree, with the named presets users start from.

The numbers of the `paper-*` presets come from the released DreamVLA/Seer training scripts
(see `docs/model.md`); `tiny` keeps every code path but shrinks the widths
so that it trains and serves on two CPU cores.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DreamModality = Literal["dynamic", "depth", "sam", "dino"]
# Order of the <dream> query groups inside a timestep; fixed because checkpoints depend on it.
DREAM_ORDER: tuple[DreamModality, ...] = ("dynamic", "depth", "dino", "sam")


class Strict(BaseModel):
    """Base for every config node: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VisionConfig(Strict):
    """A ViT image encoder in the MAE layout (patch embedding, CLS token, fixed sin-cos positions)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    frozen: bool = True
    # None: random init (only allowed when `frozen` is False, i.e. the encoder is trained).
    pretrained: str | None = "mae_pretrain_vit_base.pth"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


class TextConfig(Strict):
    """The instruction encoder: a CLIP text tower (transformers) pooled to one vector."""

    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    context_length: int = 77
    projection_dim: int = 512
    frozen: bool = True
    # "clip": CLIPTokenizer files next to the weights; "bytes": UTF-8 bytes (needs no vocab file).
    tokenizer: Literal["clip", "bytes"] = "clip"
    # Local directory or HF-cache repo id of a CLIPTextModelWithProjection; None = random init.
    pretrained: str | None = "openai/clip-vit-base-patch32"


class ResamplerConfig(Strict):
    """Perceiver resampler shared by both views (Flamingo style, no time embeddings)."""

    num_queries: int = 16
    depth: int = 3
    heads: int = 8
    head_dim: int = 64
    ff_mult: int = 4


class BackboneConfig(Strict):
    """GPT-2-shaped transformer without token/position embeddings or causal mask of its own."""

    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    dropout: float = 0.1
    # Local directory or HF-cache repo id of a GPT-2 (e.g. gpt2-medium) to start from. None, as the
    # released code: its backbone is random-initialised and robot-pretrained (import Seer/DreamVLA).
    pretrained: str | None = None


class DecoderConfig(Strict):
    """Knowledge decoders (MAE-decoder style): run in training only, never built for serving."""

    depth: int = 2
    heads: int = 16
    mlp_ratio: float = 4.0
    # Feature grids and widths of the semantic teachers (SAM ViT-B pooled 16x16x256; DINOv2 B/14 16x16x768).
    sam_grid: int = 16
    sam_dim: int = 256
    dino_grid: int = 16
    dino_dim: int = 768
    # The depth decoder's output -> metres. The released ReLU leaves a pixel predicted <= 0 at exactly 0, where
    # SiLog's log(0 + 1e-6) is -13.8 and the gradient is zero: such a pixel never recovers. Softplus keeps every
    # pixel positive and trainable (docs/model.md).
    depth_activation: Literal["relu", "softplus"] = "relu"
    # The released code leaves the SAM decoder's positions all-zero and its mask token zero-initialised.
    sam_sincos_positions: bool = False


class LossConfig(Strict):
    """Loss weights and the paper-vs-code switches (the defaults reproduce the released code)."""

    action: float = 1.0
    dynamic: float = 0.1
    depth: float = 0.001
    sam: float = 0.01
    dino: float = 0.01
    depth_loss: Literal["silog", "scale_normalized_mse"] = "silog"
    silog_lambda: float = 0.5
    semantic_loss: Literal["cosine", "infonce"] = "cosine"
    infonce_temperature: float = 0.07
    # Flow-mask threshold on the mean displacement of a patch, in pixels of `vision.image_size` (the tracks are
    # measured at that size). The released 1.0 px is at 224 px; `tiny` at 64 px scales it to 64/224 px.
    flow_threshold_px: float = Field(1.0, gt=0)


class ActionHeadConfig(Strict):
    """DiT action head with in-context conditioning; diffusion numbers as the released code."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    inference_steps: int = 10
    cfg_scale: float = 1.5
    cond_dropout: float = 0.1
    repeat_train: int = 8


class ActionConvention(Strict):
    """How a model's 7-D action maps to robot units (docs/conventions.md): scaled relative pose + gripper.

    The served contract reports it as `delta_<frame>_<rotation>` and `gripper`, so a robot that executes
    another convention refuses the model at `hello` instead of moving along the wrong axes.
    """

    chunk: int = 3
    dim: int = 7
    translation_scale_m: float = 0.02
    rotation_scale_rad: float = 0.05
    # "previous_target": a relative pose composed in the frame of the previous commanded target (our robot,
    # Seer's real-robot data). "world": position and Euler-angle differences along the world axes, as
    # CALVIN's rel_actions, which models trained on CALVIN predict (recorded by the official importer).
    frame: Literal["previous_target", "world"] = "previous_target"
    rotation: Literal["euler_xyz"] = "euler_xyz"
    gripper: Literal["1_open_0_closed"] = "1_open_0_closed"


class ModelConfig(Strict):
    """The whole DreamVLA policy."""

    name: str
    cameras: tuple[str, ...] = ("static", "wrist")
    sequence_length: int = 10
    dream_queries_per_view: int = 9
    dream: tuple[DreamModality, ...] = ("dynamic", "depth", "sam")
    future_steps: int = 3
    # "code": the released mask (no query attends to any query but actions to same-step dreams);
    # "paper": only the links *between* dream modalities are cut (papers/000 section 3.3).
    attention: Literal["code", "paper"] = "code"
    vision: VisionConfig = Field(default_factory=VisionConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    resampler: ResamplerConfig = Field(default_factory=ResamplerConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    action_head: ActionHeadConfig = Field(default_factory=ActionHeadConfig)
    action: ActionConvention = Field(default_factory=ActionConvention)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must name at least one view, each once; got {self.cameras}")
        if math.isqrt(self.dream_queries_per_view) ** 2 != self.dream_queries_per_view:
            raise ValueError("dream_queries_per_view must be a square (the decoders lay them on a grid)")
        if len(set(self.dream)) != len(self.dream):
            raise ValueError(f"duplicate dream modality in {self.dream}")
        if self.backbone.hidden % self.backbone.heads:
            raise ValueError("backbone.hidden must be divisible by backbone.heads")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError("vision.image_size must be a multiple of vision.patch_size")
        if self.vision.pretrained is None and self.vision.frozen:
            raise ValueError("a frozen vision encoder needs pretrained weights (vision.pretrained)")
        if self.text.pretrained is None and self.text.frozen:
            raise ValueError("a frozen text encoder needs pretrained weights (text.pretrained)")
        if self.action.chunk != 3 or self.action.dim != 7:
            raise ValueError("the DiT head predicts 3-step chunks of 7-D actions")
        return self

    @property
    def dream_order(self) -> tuple[DreamModality, ...]:
        return tuple(m for m in DREAM_ORDER if m in self.dream)

    @property
    def views(self) -> int:
        return len(self.cameras)

    @property
    def context_tokens(self) -> int:
        """C per timestep: text, state, the resampler's latents per view, one CLS per view."""
        return 2 + self.views * (self.resampler.num_queries + 1)

    @property
    def dream_group_tokens(self) -> int:
        """One modality's <dream> group: `dream_queries_per_view` for each view."""
        return self.views * self.dream_queries_per_view

    @property
    def query_tokens(self) -> int:
        """U per timestep: the <dream> groups then the <action> queries."""
        return self.dream_group_tokens * len(self.dream) + self.action.chunk

    @property
    def tokens_per_step(self) -> int:
        return self.context_tokens + self.query_tokens

    @property
    def sequence_tokens(self) -> int:
        return self.sequence_length * self.tokens_per_step


def _paper_calvin() -> ModelConfig:
    return ModelConfig(name="paper-calvin")


def _paper_real() -> ModelConfig:
    # Widths of Seer's DROID pretrain (H384/24L/12H, Q=6), the history of its real-robot loop (7).
    return ModelConfig(
        name="paper-real",
        sequence_length=7,
        resampler=ResamplerConfig(num_queries=6),
        backbone=BackboneConfig(hidden=384, layers=24, heads=12),
    )


def _tiny() -> ModelConfig:
    # No SAM/DINO <dream> queries: no semantic teacher runs on two CPU cores, and a modality without a
    # teacher would only add queries whose loss is never computed.
    return ModelConfig(
        name="tiny",
        sequence_length=4,
        dream_queries_per_view=4,
        dream=("dynamic", "depth"),
        vision=VisionConfig(image_size=64, patch_size=8, width=64, depth=2, heads=4, frozen=False, pretrained=None),
        text=TextConfig(
            vocab_size=260, width=64, layers=2, heads=4, context_length=32, projection_dim=64,
            frozen=False, tokenizer="bytes", pretrained=None,
        ),
        resampler=ResamplerConfig(num_queries=4, depth=1, heads=4, head_dim=16),
        backbone=BackboneConfig(hidden=64, layers=2, heads=4, dropout=0.0),
        decoder=DecoderConfig(depth=1, heads=4, sam_grid=4, sam_dim=16, dino_grid=4, dino_dim=16,
                              depth_activation="softplus"),
        action_head=ActionHeadConfig(width=64, depth=2, heads=4),
        loss=LossConfig(flow_threshold_px=1.0 * 64 / 224),
    )


PRESETS = {"paper-calvin": _paper_calvin, "paper-real": _paper_real, "tiny": _tiny}


def preset(name: str) -> ModelConfig:
    """A named config; unknown names list the ones that exist."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(PRESETS)}") from None
