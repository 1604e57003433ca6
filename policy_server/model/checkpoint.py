"""Our checkpoint format: a directory with `config.json` and `model.safetensors`, never pickle.

`config.json` carries everything a server or robot needs to agree with the weights before the arm
moves: the model config, the action/state conventions and normalisation, the camera names and image
size, and a content hash of the weights file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from safetensors.torch import load_file, save_file

from dreamvla_client.conventions import POSE_NAMES, STATE_LAYOUT
from policy_server.model.config import ModelConfig
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.text import ClipTokenizer, Tokenizer, build_tokenizer

FORMAT = "dreamvla-robot/checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used, with the reason."""


ANGLES = slice(3, len(POSE_NAMES))  # roll, pitch, yaw in the state vector
# Smallest spread a state entry is divided by: a dimension the demos never varied (a scripted expert that holds
# its orientation) must not turn a 1 mm or 5 mrad wobble at run time into a huge input.
STATE_STD_FLOOR = (0.01,) * 3 + (0.05,) * 3


class Normalization(BaseModel):
    """Robot units <-> model units. Deltas are scaled (docs/conventions.md#actions). The state is centred and
    scaled when the checkpoint carries its statistics (a model trained by dv-train); without them (released
    checkpoints, random `create` models) it enters in robot units, as the released code feeds it."""

    model_config = ConfigDict(extra="forbid")
    action_scale: list[float]
    state_mean: list[float] | None = None  # the pose entries; the angles' entries are circular means
    state_std: list[float] | None = None

    @model_validator(mode="after")
    def _pose_statistics(self) -> Normalization:
        stats = {"state_mean": self.state_mean, "state_std": self.state_std}
        if (self.state_mean is None) != (self.state_std is None):
            raise ValueError(f"state_mean and state_std come together, got {stats}")
        for name, value in stats.items():
            if value is not None and len(value) != len(POSE_NAMES):
                raise ValueError(f"{name} needs {len(POSE_NAMES)} entries ({', '.join(POSE_NAMES)}), got {value}")
        if self.state_std is not None and min(self.state_std) <= 0:
            raise ValueError(f"state_std must be positive, got {self.state_std}")
        return self

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()

    def state_to_model(self, state: np.ndarray) -> np.ndarray:
        """(..., 7) robot-unit states -> model inputs. The angles are wrapped around their mean first: a gripper
        pointing down has roll at +-pi, and the raw value flips between +3.14 and -3.14 from one frame to the
        next (measured in the sim demos), which the state encoder, a linear layer, reads as a jump of 2 pi."""
        if self.state_mean is None or self.state_std is None:
            return state
        out = np.array(state, dtype=np.float32)
        mean, std = np.asarray(self.state_mean, np.float32), np.asarray(self.state_std, np.float32)
        pose = out[..., : len(POSE_NAMES)] - mean
        pose[..., ANGLES] = (pose[..., ANGLES] + math.pi) % (2 * math.pi) - math.pi
        out[..., : len(POSE_NAMES)] = pose / std
        return out


def fit_state_normalization(states: np.ndarray) -> tuple[list[float], list[float]]:
    """(mean, std) of the pose entries of (N, 7) robot-unit states: angles by their circular mean and the spread
    of their wrapped deviations; every spread at least STATE_STD_FLOOR. The gripper entry stays as it is (the
    model thresholds it at 0.5)."""
    pose = np.asarray(states, dtype=np.float64)[:, : len(POSE_NAMES)]
    mean = pose.mean(axis=0)
    angles = pose[:, ANGLES]
    mean[ANGLES] = np.arctan2(np.sin(angles).mean(axis=0), np.cos(angles).mean(axis=0))
    dev = pose - mean
    dev[:, ANGLES] = (dev[:, ANGLES] + math.pi) % (2 * math.pi) - math.pi
    std = np.maximum(dev.std(axis=0), STATE_STD_FLOOR)
    return mean.tolist(), std.tolist()


class CameraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    height: int
    width: int
    channels: int = 3
    dtype: str = "uint8"
    color_order: str = "rgb"


class CheckpointMeta(BaseModel):
    """The validated content of config.json."""

    model_config = ConfigDict(extra="forbid")
    format: str
    format_version: int
    model: ModelConfig
    cameras: list[CameraSpec]
    state_layout: list[str]
    normalization: Normalization
    normalization_hash: str
    content_hash: str
    source: str


def default_normalization(cfg: ModelConfig) -> Normalization:
    a = cfg.action
    return Normalization(action_scale=[a.translation_scale_m] * 3 + [a.rotation_scale_rad] * 3 + [1.0])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(model: DreamVLA, out: Path, *, source: str, tokenizer: Tokenizer | None = None,
                    normalization: Normalization | None = None) -> CheckpointMeta:
    """Write `out/` atomically: files go to a temporary sibling that is renamed into place."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"refusing to overwrite non-empty directory {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    norm = normalization or default_normalization(cfg)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
    if isinstance(tokenizer, ClipTokenizer):
        tokenizer.save(tmp / "tokenizer")
    meta = CheckpointMeta(
        format=FORMAT, format_version=FORMAT_VERSION, model=cfg,
        cameras=[CameraSpec(name=c, height=cfg.vision.image_size, width=cfg.vision.image_size) for c in cfg.cameras],
        state_layout=list(STATE_LAYOUT), normalization=norm, normalization_hash=norm.digest(),
        content_hash=file_sha256(tmp / WEIGHTS_FILE), source=source,
    )
    (tmp / CONFIG_FILE).write_text(json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")
    for f in tmp.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return meta


def read_meta(directory: Path) -> CheckpointMeta:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint: {CONFIG_FILE} is missing")
    try:
        meta = CheckpointMeta.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise CheckpointError(f"{path} is invalid:\n{exc}") from exc
    if meta.format != FORMAT or meta.format_version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {meta.format} v{meta.format_version} is not {FORMAT} v{FORMAT_VERSION}")
    return meta


def load_checkpoint(directory: Path, *, with_decoders: bool = False,
                    verify: bool = True) -> tuple[DreamVLA, CheckpointMeta, Tokenizer]:
    """Build the model from config.json and load its weights (decoders only when asked: serving skips them)."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    if verify and file_sha256(weights) != meta.content_hash:
        raise CheckpointError(f"{weights} does not match the content hash in {CONFIG_FILE}: corrupt or edited")
    state = load_file(str(weights))
    has_decoders = any(k.startswith("decoders.") for k in state)
    if with_decoders and not has_decoders:
        raise CheckpointError(f"{directory} holds no knowledge decoders (it was exported for serving)")
    if not with_decoders:
        state = {k: v for k, v in state.items() if not k.startswith("decoders.")}
    model = DreamVLA(meta.model, with_decoders=with_decoders, load_pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit config {meta.model.name!r}: {exc}") from exc
    return model, meta, build_tokenizer(meta.model.text, directory)
