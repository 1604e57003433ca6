"""Semantic teachers for the SAM and DINOv2 heads, through `transformers`, from local files only.

As the released extractors: SAM ViT-B's image-encoder output (256 x 64 x 64) average-pooled with stride 4 to
16 x 16 tokens of 256 channels; DINOv2 ViT-B/14's normalised patch tokens of a 224-px bicubic input (16 x 16 x
768). A teacher is found as a folder under $DV_WEIGHTS_DIR (`flow.weights_dir()`) or as the repo in the local
Hugging Face cache; nothing is downloaded, and a missing teacher is an error naming what to download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from policy_server.training.features_cache import FeatureSpec
from policy_server.training.flow import MissingTeacherError, weights_dir

REPOS = {"sam": "facebook/sam-vit-base", "dino": "facebook/dinov2-base"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH = 16


class SemanticTeacher(Protocol):
    def features(self, images: np.ndarray) -> np.ndarray:
        """(n, R, R, 3) uint8 -> (n, tokens, channels) float32."""
        ...


def teacher_dir(name: str) -> Path:
    """The local folder of a teacher: $DV_WEIGHTS_DIR/<repo name>, else the repo in the local HF cache."""
    repo = REPOS[name]
    local = weights_dir() / repo.split("/")[1]
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (OSError, ValueError) as exc:
        raise MissingTeacherError(
            f"the {name!r} head needs its teacher, {repo}, which is not on this machine (looked in {local} and the "
            f"Hugging Face cache): download it (`huggingface-cli download {repo}`, or into {local}), or use a "
            f"config without {name!r} in dream") from exc


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _batches(images: np.ndarray) -> list[torch.Tensor]:
    """(n, R, R, 3) uint8 -> float (b, 3, R, R) in [0, 1], in batches."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # a copy: the images may be a read-only memmap
    return [x[i : i + BATCH].float() / 255 for i in range(0, len(x), BATCH)]


@dataclass
class DinoTeacher:
    model: torch.nn.Module
    size: int = 224

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        out = []
        for x in _batches(images):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
            out.append(self.model(pixel_values=_normalise(x)).last_hidden_state[:, 1:].float())  # drop CLS
        return torch.cat(out).numpy()


@dataclass
class SamTeacher:
    model: torch.nn.Module
    size: int = 1024

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        out = []
        for x in _batches(images):  # square input: SAM's longest-side resize to 1024 needs no padding
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            emb = self.model.get_image_embeddings(pixel_values=_normalise(x))  # (b, 256, 64, 64)
            out.append(F.avg_pool2d(emb, 4).flatten(2).transpose(1, 2).float())  # (b, 256 tokens, 256)
        return torch.cat(out).numpy()


def load_teacher(name: str) -> SemanticTeacher:
    folder = teacher_dir(name)  # first: a missing teacher is reported without importing transformers' models
    from transformers import Dinov2Model, SamModel

    cls = {"sam": SamModel, "dino": Dinov2Model}[name]
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True).eval()
    except OSError as exc:
        raise MissingTeacherError(f"{folder} holds no {REPOS[name]} weights ({exc}): download {REPOS[name]}") from exc
    return SamTeacher(model) if name == "sam" else DinoTeacher(model)


def load_teachers(spec: FeatureSpec) -> dict[str, SemanticTeacher]:
    """The spec's teachers, each checked against the token grid and width the config's head predicts."""
    teachers = {}
    for name in spec.semantics:
        teacher = load_teacher(name)
        probe = teacher.features(np.zeros((1, spec.image_size, spec.image_size, 3), np.uint8))
        want = (spec.semantic_grid[name] ** 2, spec.semantic_dim[name])
        if probe.shape[1:] != want:
            raise MissingTeacherError(f"the {name!r} teacher in {teacher_dir(name)} gives {probe.shape[1:]} tokens x "
                                      f"channels, the config's head predicts {want}: use the teacher the config "
                                      "was made for")
        teachers[name] = teacher
    return teachers
