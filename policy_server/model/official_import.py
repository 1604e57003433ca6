"""Import the authors' released DreamVLA / Seer `.pth` checkpoints into our checkpoint format.

A released file is what the official training scripts save: a dict whose `model_state_dict` holds
only the trainable parameters (float32) of a DDP-wrapped model, every key prefixed `module.`; released
files may lack the optimizer and scheduler entries, so only `model_state_dict` (or a bare state dict)
is read, never unpickling code. The frozen towers come from their own releases: the MAE ViT-B/16
encoder from `mae_pretrain_vit_base.pth` and the CLIP ViT-B/32 text tower from
`openai/clip-vit-base-patch32`. The attention mask and the decoders' position tables are rebuilt.

Names. The layout differences (GPT-2 `Conv1D` weights stored [in, out], 4-D query tokens, a
[1, S, 1, H] time embedding, other module names) are handled by one table of rules (`_rules`) that
both directions use, so `export(convert(sd))` reproduces the official tensors and the two cannot
drift apart. Every official key is either mapped or dropped for a stated reason; anything else is an
error, because a silently ignored key is exactly how the official strict=False loaders lose weights.

Sizes. Shapes give every width, depth and query count but no head count. The backbone's heads follow
from its width (1024: 16, 384: 12, the released scripts); the DiT is identified as DiT-S, -B or -L
from its width and depth (`DIT_SIZES`, DiT-S with 96-wide heads); any other size is refused.

Training data. No file records the data it was trained on, yet that data fixes how the state and
images enter the model and how its actions are read (`TRAINING_DATA`). The released configurations
are recognised by their shapes (`RELEASES`); any other file must name its data. A difference our
checkpoint can record (the action frame) goes into its config, so the served contract states it;
any other difference from our robot refuses the import with every difference listed. LIBERO models
are refused: see docs/model.md.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from policy_server.model.backbone import CONV1D_WEIGHT
from policy_server.model.checkpoint import save_checkpoint
from policy_server.model.config import (
    ActionConvention,
    ActionHeadConfig,
    BackboneConfig,
    DecoderConfig,
    ModelConfig,
    ResamplerConfig,
    preset,
)
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.text import (
    CLIP_REPO,
    ClipTokenizer,
    MissingWeightsError,
    load_clip_text_model,
    resolve_clip_dir,
)
from policy_server.model.vision import read_mae_encoder

DDP_PREFIX = "module."
# Our frozen towers: never in an official file, loaded from the MAE and CLIP releases instead.
EXTERNAL_PREFIXES = ("text_encoder.", "vision_encoder.")

_UNUSED = "saved but never used in the official forward pass"
_SEER_HEAD = "Seer's MLP action head: DreamVLA replaces it with the DiT head (the official finetune resets it too)"
_RESET_QUERIES = "reset: query count differs, as --reset_obs_token"
# Official module prefix -> why its weights are not imported.
_DROPPED: dict[str, str] = {
    "action_pose_encoder.": _UNUSED,
    "action_gripper_position_encoder.": _UNUSED,
    "action_projector.": _UNUSED,
    "recon_state_decoder.": _UNUSED,
    "recon_arm_state_decoder.": _UNUSED,
    "recon_gripper_state_decoder.": _UNUSED,
    "action_model.net.history_embedder.": _UNUSED,
    "action_decoder.": _SEER_HEAD,
    "arm_action_decoder.": _SEER_HEAD,
    "gripper_action_decoder.": _SEER_HEAD,
}
# GPT-2 `Conv1D` weights: stored [in, out], ours are nn.Linear [out, in].
_CONV1D = re.compile(r"transformer_backbone\." + CONV1D_WEIGHT.pattern)
# Backbone width -> heads of the official scripts (the width alone does not determine it).
_HEADS = {1024: 16, 384: 12}
# The released action-model code's DiT sizes: (width, blocks) -> (name, heads). No saved tensor's shape
# depends on the head count, so it cannot be read from a file: a size outside this table is refused.
# DiT-S has 96-wide heads, DiT-B and DiT-L 64-wide ones.
DIT_SIZES: dict[tuple[int, int], tuple[str, int]] = {
    (384, 6): ("DiT-S", 4),
    (768, 12): ("DiT-B", 12),
    (1024, 24): ("DiT-L", 16),
}

_MAE_ENCODER = (
    "patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "norm.weight", "norm.bias",
)
_MAE_BLOCK = tuple(f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                   for p in ("weight", "bias"))
_MAE_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


class OfficialImportError(ValueError):
    """An official checkpoint (or MAE/CLIP file) that cannot be imported, with the reason."""


@dataclass(frozen=True)
class _Dream:
    """Official names of one <dream> modality (the SAM decoder's blocks are named differently)."""

    tokens: str
    mask_token: str
    stem: str  # `<stem>_obs_pred_projector`, `<stem>_norm`, `<stem>_pred`
    blocks: str


_DREAMS: dict[str, _Dream] = {
    "dynamic": _Dream("obs_tokens", "mask_token", "image_decoder", "image_decoder"),
    "depth": _Dream("depth_tokens", "depth_mask_token", "depth_decoder", "depth_decoder"),
    "sam": _Dream("sam_feat_tokens", "sam_mask_token", "sam_decoder", "sam_feat_decoder"),
}


@dataclass(frozen=True)
class _Rule:
    """One official <-> ours name pair: a whole key, or a module prefix when it ends with '.'.

    layout: "plain" (same tensor, bar the Conv1D transposes), "query" ([1, 1, N, H] <-> [N, H])
    or "time" ([1, S, 1, H] <-> [S, H]). modality: the <dream> modality the weights belong to.
    """

    official: str
    ours: str
    layout: Literal["plain", "query", "time"] = "plain"
    modality: str | None = None


@dataclass
class ImportReport:
    """What happened to every key: the audit trail of one import."""

    target: str
    mapped: dict[str, str] = field(default_factory=dict)  # official key -> our key
    dropped: dict[str, str] = field(default_factory=dict)  # official key -> reason
    fresh: list[str] = field(default_factory=list)  # our keys that keep their initialisation
    time_embedding: tuple[int, int] | None = None  # (official steps, kept steps) when truncated
    trained_on: str | None = None  # the data the file was trained on, and how that is known
    conventions: list[str] = field(default_factory=list)  # differences from our robot, recorded in the checkpoint

    def summary(self) -> str:
        """Human-readable lines for a CLI: counts, drop reasons, freshly initialised modules."""
        lines = [f"target {self.target}: {len(self.mapped)} tensors mapped, {len(self.dropped)} dropped, "
                 f"{len(self.fresh)} fresh"]
        if self.time_embedding is not None:
            lines.append("time embedding truncated: kept the first {1} of {0} steps".format(*self.time_embedding))
        if self.trained_on is not None:
            lines.append(f"trained on {self.trained_on}")
        lines += [f"recorded in the checkpoint, so the served contract states it: {c}" for c in self.conventions]
        for reason in sorted(set(self.dropped.values())):
            modules = _modules((k for k, r in self.dropped.items() if r == reason), depth=3)
            lines.append(f"dropped ({reason}): {', '.join(modules)}")
        if self.fresh:
            lines.append(f"fresh: {', '.join(_modules(self.fresh, depth=2))}")
        return "\n".join(lines)


def _modules(keys: Iterable[str], depth: int) -> list[str]:
    """Collapse keys to their module (at most `depth` names, cut before a block index), first-seen order."""
    out = []
    for key in keys:
        parts = key.removesuffix(".weight").removesuffix(".bias").split(".")
        cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts))
        out.append(".".join(parts[: max(1, min(cut, depth))]))
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------ official file


def _torch_load(path: Path) -> object:
    """torch.load without running pickled code: released files are untrusted input."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise OfficialImportError(f"{path} cannot be read with weights_only=True: {exc}") from exc


def load_official(path: str | Path) -> dict[str, Tensor]:
    """Read an official `.pth` (no pickle code runs) and return its state dict without `module.`.

    Accepts the training-script layout (a dict with `model_state_dict`) or a bare state dict,
    because released files are sometimes stripped down to the weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} does not exist")
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise OfficialImportError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    sd = obj["model_state_dict"] if "model_state_dict" in obj else obj
    if not isinstance(sd, Mapping) or not sd:
        raise OfficialImportError(f"{path}: expected a non-empty dict with 'model_state_dict' or a bare state dict")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise OfficialImportError(f"{path}: expected a dict with 'model_state_dict' or a bare state dict; "
                                  f"entries that are not tensors: {bad[:5]}")
    return {k.removeprefix(DDP_PREFIX): v for k, v in sd.items()}


def _shape(sd: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise OfficialImportError(f"not an official DreamVLA/Seer state dict: {key!r} is missing")
    return tuple(sd[key].shape)


def _count(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of `prefix.N.` sub-modules, which must be numbered 0..N-1."""
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise OfficialImportError(f"{prefix}N blocks are not numbered 0..N-1: {sorted(found)}")
    return len(found)


def dit_head(sd: Mapping[str, Tensor]) -> ActionHeadConfig | None:
    """The DiT action head of an official state dict, sized from its width and block count; None without one.

    Raises for a (width, blocks) pair that is none of DiT-S/B/L: its head count would be a guess.
    """
    if not any(k.startswith("action_model.net.") for k in sd):
        return None
    width = _shape(sd, "action_model.net.positional_embedding")[1]
    depth = _count(sd, "action_model.net.blocks.")
    if (width, depth) not in DIT_SIZES:
        known = ", ".join(f"{name} ({w} wide, {d} blocks, {h} heads)" for (w, d), (name, h) in DIT_SIZES.items())
        raise OfficialImportError(f"DiT action head {width} wide with {depth} blocks is none of the released sizes "
                                  f"({known}); its head count is not stored in the weights, so it cannot be imported")
    return ActionHeadConfig(width=width, depth=depth, heads=DIT_SIZES[width, depth][1])


def _dit_name(head: ActionHeadConfig) -> str:
    return DIT_SIZES[head.width, head.depth][0]


def _check_action_head(source: ActionHeadConfig | None, target: ModelConfig) -> None:
    """The target's DiT must be the file's size, heads included (shapes alone would not catch the heads)."""
    if source is None:
        return
    ours = target.action_head
    if (ours.width, ours.depth, ours.heads) != (source.width, source.depth, source.heads):
        raise OfficialImportError(
            f"the file's {_dit_name(source)} action head (width {source.width}, {source.depth} blocks, "
            f"{source.heads} heads) does not fit target {target.name!r} (action_head width {ours.width}, "
            f"depth {ours.depth}, heads {ours.heads})")


def _dreamvla_libero() -> ModelConfig:
    """The LIBERO finetune scripts' network: paper-calvin widths, 7 steps, no depth prediction.

    The network only: its inputs and actions follow LIBERO's conventions, which this stack cannot serve
    (`with_training_data` refuses them).
    """
    base = preset("paper-calvin").model_dump()
    return ModelConfig.model_validate(base | {"name": "dreamvla-libero", "sequence_length": 7,
                                              "dream": ("dynamic", "sam")})


def _named(cfg: ModelConfig) -> ModelConfig:
    """The known config equal to `cfg` up to the name, so imports of released files carry known names."""
    for known in (preset("paper-calvin"), preset("paper-real"), _dreamvla_libero()):
        if known.model_dump(exclude={"name"}) == cfg.model_dump(exclude={"name"}):
            return known
    return cfg


def infer_config(sd: Mapping[str, Tensor]) -> ModelConfig:
    """Our ModelConfig for a DreamVLA state dict, read from its shapes (known shapes give a preset).

    Seer files have no DiT head and no depth/SAM parts, so they do not determine a DreamVLA
    config: the caller must choose the target (whose new parts then start fresh). The config
    describes the network; its action convention is ours until `with_training_data` sets the file's.
    """
    hidden = _shape(sd, "action_pred_token")[-1]
    dreams = {m: _shape(sd, d.tokens)[2] for m, d in _DREAMS.items() if d.tokens in sd}
    action_head = dit_head(sd)
    if action_head is None:
        if set(dreams) <= {"dynamic"}:
            raise OfficialImportError(
                "this is a Seer checkpoint (MLP action head, no DiT, no depth/SAM queries): there is no DreamVLA "
                "config to infer; pass a target config (paper-real for the DROID pre-train, paper-calvin for "
                "Seer-Large) and its DiT head and depth/SAM parts start fresh")
        raise OfficialImportError("DreamVLA checkpoint without its DiT action head (action_model.net.*): incomplete")
    if hidden not in _HEADS:
        raise OfficialImportError(f"backbone width {hidden} matches no official script (known: {sorted(_HEADS)})")
    counts = set(dreams.values())
    if "dynamic" not in dreams or len(counts) != 1 or min(counts) % 2:
        raise OfficialImportError(f"expected obs tokens and equal, even query counts per modality, got {dreams}")
    cfg = ModelConfig(
        name="official-import",
        sequence_length=_shape(sd, "transformer_backbone_position_embedding")[1],
        dream_queries_per_view=counts.pop() // 2,
        dream=tuple(dreams),
        resampler=ResamplerConfig(num_queries=_shape(sd, "perceiver_resampler.latents")[0]),
        backbone=BackboneConfig(hidden=hidden, layers=_count(sd, "transformer_backbone.h."), heads=_HEADS[hidden]),
        decoder=DecoderConfig(depth=_count(sd, "image_decoder.")),
        action_head=action_head,
    )
    return _named(cfg)


# ------------------------------------------------------------------------------ training data

TrainingData = Literal["calvin", "libero", "real"]


@dataclass(frozen=True)
class DataConventions:
    """How one dataset's observations reached the released models, and how their actions were read.

    Nothing in a file records this: it is fixed by the data the model was trained on. A model served
    with other conventions receives inputs it never saw and moves the arm in units or axes it was
    not trained for, without any error.
    """

    state_orientation: Literal["euler_xyz", "axis_angle"]
    state_gripper: Literal["open_closed", "finger_positions"]  # into gripper_state_encoder, Linear(2 -> H)
    image_flip: Literal["none", "primary_vertical"]
    action_scale: tuple[float, float] | None  # (m, rad) per model unit; None: controller commands, no metric scale
    action_rotation: Literal["euler_xyz", "axis_angle"]
    action_frame: Literal["previous_target", "world"]
    gripper_action: Literal["1_open_0_closed", "1_closed_0_open"]


_ACTION = ActionConvention()
# What this stack serves: the engine's fixed inputs (state x, y, z, Euler xyz, gripper_open as a one-hot pair;
# images as captured) and the action convention our robot executes (docs/conventions.md).
ROBOT = DataConventions(
    state_orientation="euler_xyz", state_gripper="open_closed", image_flip="none",
    action_scale=(_ACTION.translation_scale_m, _ACTION.rotation_scale_rad), action_rotation=_ACTION.rotation,
    action_frame=_ACTION.frame, gripper_action=_ACTION.gripper,
)
TRAINING_DATA: dict[TrainingData, DataConventions] = {
    # CALVIN: robot_obs[:6] (position, Euler xyz) + the gripper command as a one-hot pair; rel_actions are
    # position and Euler differences along the world axes, clipped and scaled by 1/0.02 m and 1/0.05 rad;
    # gripper -1 close / +1 open, mapped to 0/1.
    "calvin": DataConventions("euler_xyz", "open_closed", "none", (0.02, 0.05), "euler_xyz", "world",
                              "1_open_0_closed"),
    # LIBERO (--gripper_width): ee_states[:6] (position, axis-angle) + robot0_gripper_qpos (two finger
    # positions); the agentview image flipped vertically in training and evaluation; actions are the raw
    # demo commands of robosuite's OSC controller in [-1, 1] (world axes, axis-angle), gripper -1 open / +1 close.
    "libero": DataConventions("axis_angle", "finger_positions", "primary_vertical", None, "axis_angle", "world",
                              "1_closed_0_open"),
    # Seer's real-robot format (its DROID pre-train, real fine-tunes): position + Euler xyz, gripper open/closed;
    # deltas inv(T_last_target) T_target scaled by 1/0.02 m and 1/0.05 rad, as our robot executes them.
    "real": DataConventions("euler_xyz", "open_closed", "none", (0.02, 0.05), "euler_xyz", "previous_target",
                            "1_open_0_closed"),
}

_LABELS = {
    "state_orientation": "state orientation", "state_gripper": "state gripper", "image_flip": "images",
    "action_scale": "action units", "action_rotation": "action rotation", "action_frame": "action frame",
    "gripper_action": "gripper action",
}
_MEANINGS: dict[object, str] = {
    "euler_xyz": "Euler xyz angles",
    "axis_angle": "an axis-angle vector",
    "open_closed": "open/closed as a one-hot pair",
    "finger_positions": "two finger positions (robot0_gripper_qpos, --gripper_width)",
    "none": "as captured",
    "primary_vertical": "the primary (agentview) view flipped vertically",
    None: "raw controller commands in [-1, 1] with no metric scale",
    "previous_target": "a relative pose in the previous target's frame",
    "world": "differences along the world axes",
    "1_open_0_closed": "1 = open",
    "1_closed_0_open": "1 = closed",
}
_STATE_MEANINGS = {"axis_angle": "an axis-angle vector (LIBERO's ee_states[3:6])"}


def _meaning(name: str, value: object) -> str:
    """One convention value in words, for the lines that name a difference."""
    if isinstance(value, tuple):
        return "{} m / {} rad per unit".format(*value)
    if name == "state_orientation" and value in _STATE_MEANINGS:
        return _STATE_MEANINGS[value]
    return _MEANINGS[value]


def _carried(name: str, value: object) -> bool:
    """Whether our checkpoint can record this convention, so that the served contract states it truthfully."""
    return name == "action_frame" or (name == "action_scale" and value is not None)


def with_training_data(cfg: ModelConfig, data: TrainingData) -> tuple[ModelConfig, list[str]]:
    """`cfg` with the action convention of `data`, and one line per convention that differs from our robot.

    A difference our checkpoint can record (the action frame, a metric action scale) goes into
    `cfg.action`, so the served contract names it and a robot that executes another convention refuses
    the model at `hello`. Any other difference (state, images, unscaled actions, rotation, gripper
    sign) would be served silently wrong, so it refuses the import, listing every difference.
    """
    theirs = TRAINING_DATA[data]
    differ = [name for name in _LABELS if getattr(theirs, name) != getattr(ROBOT, name)]
    lines = [f"{_LABELS[name]}: {_meaning(name, getattr(theirs, name))} in training, "
             f"{_meaning(name, getattr(ROBOT, name))} on our robot" for name in differ]
    if not all(_carried(name, getattr(theirs, name)) for name in differ):
        raise OfficialImportError(f"a model trained on {data} data cannot be served on this stack: it would get "
                                  f"inputs and have its actions read in conventions it was not trained with: "
                                  f"{'; '.join(lines)}")
    translation, rotation = theirs.action_scale or ROBOT.action_scale
    action = ActionConvention.model_validate(cfg.action.model_dump() | {
        "translation_scale_m": translation, "rotation_scale_rad": rotation, "frame": theirs.action_frame})
    return cfg.model_copy(update={"action": action}), lines


# What identifies a released file: (backbone width, time steps, official query count per <dream> modality,
# DiT size or None for Seer's MLP head).
Signature = tuple[int, int, tuple[tuple[str, int], ...], str | None]


@dataclass(frozen=True)
class Release:
    """A released training script, recognised by the shapes it saves (no file records its data)."""

    name: str
    trained_on: TrainingData
    signature: Signature


RELEASES = (
    Release("DreamVLA CALVIN ABC-D finetune", "calvin",
            (1024, 10, (("dynamic", 18), ("depth", 18), ("sam", 18)), "DiT-B")),
    Release("DreamVLA LIBERO finetune", "libero", (1024, 7, (("dynamic", 18), ("sam", 18)), "DiT-B")),
    Release("Seer-Large CALVIN ABC-D finetune", "calvin", (1024, 10, (("dynamic", 32),), None)),
    Release("Seer-Large CALVIN ABC-D pretrain", "calvin", (1024, 14, (("dynamic", 32),), None)),
    Release("Seer DROID pretrain", "real", (384, 11, (("dynamic", 18),), None)),
)


def signature(sd: Mapping[str, Tensor]) -> Signature:
    """The shapes of `sd` that tell the released configurations apart."""
    head = dit_head(sd)
    return (_shape(sd, "action_pred_token")[-1], _shape(sd, "transformer_backbone_position_embedding")[1],
            tuple((m, _shape(sd, d.tokens)[2]) for m, d in _DREAMS.items() if d.tokens in sd),
            None if head is None else _dit_name(head))


def recognise(sd: Mapping[str, Tensor]) -> Release | None:
    """The released training script whose saved shapes `sd` has, or None."""
    found = signature(sd)
    return next((r for r in RELEASES if r.signature == found), None)


def _training_data(sd: Mapping[str, Tensor], declared: TrainingData | None) -> tuple[TrainingData, str]:
    """The data the file was trained on, and how that is known (for the report)."""
    if declared is not None and declared not in TRAINING_DATA:
        raise OfficialImportError(f"unknown training data {declared!r}; choose one of {' | '.join(TRAINING_DATA)}")
    release = recognise(sd)
    if declared is not None:
        known = "" if release is None else f"; the shapes are those of the released {release.name}"
        return declared, f"declared{known}"
    if release is None:
        raise OfficialImportError(
            "the file's shapes match no released training script, so the data it was trained on (and with it "
            "its state, image and action conventions) is unknown: pass trained_on (--trained-on) "
            f"{' | '.join(TRAINING_DATA)}")
    return release.trained_on, f"recognised: {release.name}"


# ------------------------------------------------------------------------------ name map


def _rules(cfg: ModelConfig) -> tuple[_Rule, ...]:
    """The official <-> ours name table for a config (camera names come from the config)."""
    primary, wrist = cfg.cameras
    rules = [
        _Rule("action_pred_token", "action_queries", "query"),
        _Rule("transformer_backbone_position_embedding", "time_embedding", "time"),
        *(_Rule(f"{m}.", f"{m}.") for m in ("text_projector", "arm_state_encoder", "gripper_state_encoder",
                                             "state_projector", "perceiver_resampler", "embedding_layer_norm")),
        _Rule("image_primary_projector.", f"patch_projectors.{primary}."),
        _Rule("image_wrist_projector.", f"patch_projectors.{wrist}."),
        _Rule("cls_token_primary_projector.", f"cls_projectors.{primary}."),
        _Rule("cls_token_wrist_projector.", f"cls_projectors.{wrist}."),
        _Rule("transformer_backbone.", "backbone."),
        _Rule("action_model.net.", "action_head.net."),
    ]
    for m, d in _DREAMS.items():
        ours = f"decoders.{m}."
        rules += [
            _Rule(d.tokens, f"dream_queries.{m}", "query", m),
            _Rule(d.mask_token, ours + "mask_token", modality=m),
            _Rule(f"{d.stem}_obs_pred_projector.", ours + "obs_pred_projector.", modality=m),
            _Rule(f"{d.blocks}.", ours + "blocks.", modality=m),
            _Rule(f"{d.stem}_norm.", ours + "norm.", modality=m),
            _Rule(f"{d.stem}_pred.", ours + "pred.", modality=m),
        ]
    return tuple(rules)


def _rename(key: str, src: str, dst: str) -> str | None:
    """`key` renamed from `src` to `dst` (whole key, or prefix when `src` ends with '.'), else None."""
    if src.endswith("."):
        return dst + key[len(src):] if key.startswith(src) else None
    return dst if key == src else None


def _find(rules: Iterable[_Rule], key: str, *, from_official: bool) -> tuple[_Rule, str] | None:
    for rule in rules:
        src, dst = (rule.official, rule.ours) if from_official else (rule.ours, rule.official)
        if (renamed := _rename(key, src, dst)) is not None:
            return rule, renamed
    return None


def _drop_reason(key: str) -> str | None:
    return next((reason for prefix, reason in _DROPPED.items() if key.startswith(prefix)), None)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the import target and its shape, from a weightless (meta) model."""
    with torch.device("meta"):
        model = DreamVLA(cfg, with_decoders=True, load_pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _shape_error(key: str, got: tuple[int, ...], ours: str, want: tuple[int, ...], target: str) -> OfficialImportError:
    return OfficialImportError(f"{key!r} has shape {list(got)}, but {ours!r} in target {target!r} needs {list(want)}")


def _unit_dims_ok(shape: tuple[int, ...], layout: str) -> bool:
    """The singleton dims of the official 4-D layouts: [1, 1, N, H] queries, [1, S, 1, H] time."""
    if len(shape) != 4:
        return False
    return shape[:2] == (1, 1) if layout == "query" else (shape[0], shape[2]) == (1, 1)


def convert(sd: Mapping[str, Tensor], target: ModelConfig) -> tuple[dict[str, Tensor], ImportReport]:
    """Official state dict (without `module.`) -> our state-dict entries for `target`, and the report.

    Pure: no file access, no model weights. Returned tensors may be views of the input (the model
    load copies them). Raises for any key that is neither mapped nor dropped by rule, for any
    shape that does not fit the target, and for a DiT head of another size than the target's.
    """
    _check_action_head(dit_head(sd), target)
    expected = expected_shapes(target)
    rules = _rules(target)
    report = ImportReport(target=target.name)
    ours: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        if (reason := _drop_reason(key)) is not None:
            report.dropped[key] = reason
            continue
        found = _find(rules, key, from_official=True)
        if found is None:
            hint = " (strip 'module.' first, as load_official does)" if key.startswith(DDP_PREFIX) else ""
            raise OfficialImportError(f"unknown official key {key!r}: neither mapped nor dropped by any rule{hint}")
        rule, name = found
        if rule.modality is not None and rule.modality not in target.dream:
            report.dropped[key] = f"target {target.name!r} has no {rule.modality!r} dream modality"
            continue
        if name not in expected:
            raise OfficialImportError(f"{key!r} maps to {name!r}, which target {target.name!r} does not have")
        value = _to_ours(key, tensor, rule, name, expected[name], report)
        if value is not None:
            ours[name] = value
            report.mapped[key] = name
    report.fresh = [k for k in expected if k not in ours and not k.startswith(EXTERNAL_PREFIXES)]
    return ours, report


def _to_ours(key: str, tensor: Tensor, rule: _Rule, name: str, want: tuple[int, ...],
             report: ImportReport) -> Tensor | None:
    """One tensor in our layout; None when the rules reset it (the report then says why)."""
    got = tuple(tensor.shape)
    if rule.layout != "plain" and not _unit_dims_ok(got, rule.layout):
        raise _shape_error(key, got, name, want, report.target)
    if rule.layout == "query":
        value = tensor[0, 0]
        if rule.modality is not None and value.shape[0] != want[0]:
            report.dropped[key] = _RESET_QUERIES
            return None
    elif rule.layout == "time":
        value = tensor[0, :, 0]
        steps = value.shape[0]
        if steps > want[0]:  # a longer pre-train: keep the first steps, as the official finetune does
            value = value[: want[0]]
            report.time_embedding = (steps, want[0])
    else:
        value = tensor.t() if _CONV1D.fullmatch(key) else tensor
    if tuple(value.shape) != want:
        raise _shape_error(key, got, name, want, report.target)
    return value


def export(ours: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state-dict entries -> official key names (with `module.`) and layouts; the inverse of `convert`.

    The frozen towers are skipped (official files never hold them); a key with no official name raises.
    """
    rules = _rules(cfg)
    out: dict[str, Tensor] = {}
    for key, tensor in ours.items():
        if key.startswith(EXTERNAL_PREFIXES):
            continue
        found = _find(rules, key, from_official=False)
        if found is None:
            raise OfficialImportError(f"{key!r} has no official counterpart")
        rule, name = found
        if rule.layout == "query":
            value = tensor[None, None]
        elif rule.layout == "time":
            value = tensor[None, :, None]
        else:
            value = tensor.t() if _CONV1D.fullmatch(name) else tensor
        out[DDP_PREFIX + name] = value
    return out


# ------------------------------------------------------------------------------ frozen towers


def load_mae(path: str | Path) -> dict[str, Tensor]:
    """The MAE ViT encoder weights of `mae_pretrain_vit_base.pth` as our `vision_encoder.*` entries.

    The MAE decoder and its mask token are dropped by name (the policy never runs them); any other
    unknown key, or an incomplete encoder, is an error rather than a half-random vision tower.
    """
    encoder = read_mae_encoder(path)
    blocks: dict[int, set[str]] = {}
    for key in encoder:
        if m := _MAE_BLOCK_KEY.fullmatch(key):
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
        elif key not in _MAE_ENCODER:
            raise OfficialImportError(f"{path}: unexpected key {key!r} in the MAE file")
    missing = [k for k in _MAE_ENCODER if k not in encoder]
    missing += [f"blocks.{i}.{p}" for i in range(max(blocks, default=-1) + 1) for p in _MAE_BLOCK
                if p not in blocks.get(i, ())]
    if missing or not blocks:
        raise OfficialImportError(f"{path}: MAE encoder keys missing: {missing or ['blocks.0.*']}")
    return {f"vision_encoder.{k}": v for k, v in encoder.items()}


def load_clip_text(directory: Path) -> dict[str, Tensor]:
    """CLIP text-tower weights (with projection) as our `text_encoder.clip.*` entries."""
    return {f"text_encoder.clip.{k}": v.float() for k, v in load_clip_text_model(directory).state_dict().items()}


def _check_external(state: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], what: str,
                    target: str) -> None:
    for key, tensor in state.items():
        if key not in expected:
            raise OfficialImportError(f"{what}: {key!r} does not exist in target {target!r}")
        if tuple(tensor.shape) != expected[key]:
            raise _shape_error(key, tuple(tensor.shape), key, expected[key], target)


# ------------------------------------------------------------------------------ the import


def import_official(ckpt: str | Path, mae: str | Path, out: str | Path, *, clip: str | Path | None = None,
                    target: ModelConfig | None = None, trained_on: TrainingData | None = None) -> ImportReport:
    """Official checkpoint + MAE file + CLIP directory -> one of our checkpoint directories at `out`.

    Every input is checked (names, shapes, training-data conventions, files) before the full model is
    built. `trained_on` names the file's training data; by default it is recognised from the shapes of
    a released file, and a file that matches none must name it. Only the report's `fresh` keys keep
    their initialisation; everything else comes from one of the three sources.
    """
    ckpt, mae = Path(ckpt), Path(mae)
    sd = load_official(ckpt)
    cfg = target if target is not None else infer_config(sd)
    data, how = _training_data(sd, trained_on)
    cfg, differences = with_training_data(cfg, data)
    source = clip if clip is not None else cfg.text.pretrained
    if source is None:
        raise MissingWeightsError(f"the official models need CLIP text weights: download {CLIP_REPO!r} and pass clip")
    clip_dir = resolve_clip_dir(source)
    # Record where the frozen towers came from (configs are frozen: copy with the new paths).
    cfg = cfg.model_copy(update={"text": cfg.text.model_copy(update={"pretrained": str(source)}),
                                 "vision": cfg.vision.model_copy(update={"pretrained": str(mae)})})
    tokenizer = ClipTokenizer(clip_dir, cfg.text.context_length)
    converted, report = convert(sd, cfg)
    report.trained_on, report.conventions = f"{data} data ({how})", differences
    expected = expected_shapes(cfg)
    vision = load_mae(mae)
    _check_external(vision, expected, f"MAE file {mae}", cfg.name)
    text = load_clip_text(clip_dir)
    _check_external(text, expected, f"CLIP directory {clip_dir}", cfg.name)
    state = converted | vision | text
    unsupplied = [k for k in expected if k not in state and k not in report.fresh]
    if unsupplied:
        raise OfficialImportError(f"target {cfg.name!r} keys that no source supplies: {unsupplied[:10]}")
    model = DreamVLA(cfg, with_decoders=True, load_pretrained=False)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != set(report.fresh):
        raise OfficialImportError(f"load mismatch: unexpected {result.unexpected_keys}, "
                                  f"missing {sorted(set(result.missing_keys) - set(report.fresh))}")
    save_checkpoint(model, Path(out), source=f"official:{ckpt.name}", tokenizer=tokenizer)
    return report
