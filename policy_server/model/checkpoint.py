"""Our checkpoint format: a directory with `config.json` and `model.safetensors`, never pickle.

`config.json` carries everything a server or robot needs to agree with the weights before the arm
moves: the model config, the action/state conventions and normalisation, the camera names and image
size, and a content hash of the weights file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file

from dreamvla_client.conventions import STATE_LAYOUT
from policy_server.model.config import ModelConfig
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.text import ClipTokenizer, Tokenizer, build_tokenizer

FORMAT = "dreamvla-robot/checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used, with the reason."""


class Normalization(BaseModel):
    """Model units -> robot units. Deltas are scaled (docs/conventions.md#actions); state enters unnormalised."""

    model_config = ConfigDict(extra="forbid")
    action_scale: list[float]
    state_mean: list[float] | None = None
    state_std: list[float] | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


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
