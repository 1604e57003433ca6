"""What the policy dreams: its predicted dynamic region and depth at t+3 beside the teacher's, as pictures.

Serving never runs the knowledge decoders, so nothing else shows whether the <dream> queries learned anything. This
loads them for this purpose only and renders, per camera, one row of five 64-px panels (enlarged):

    frame t | t+3, teacher's dynamic patches lit | predicted t+3 in those patches | teacher depth | predicted depth

The dynamic head predicts each patch's pixels standardised by the patch's own mean and spread (MAE's norm-pix
target), so the prediction is shown with the real frame's patch statistics: what is the model's is the pattern
inside a patch, not its mean brightness. Depth is the head's metres on the teacher's colour scale; black is no data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from policy_server.model.checkpoint import Normalization, load_checkpoint
from policy_server.model.dreamvla import DreamVLA
from policy_server.model.knowledge import depth_metres, flow_motion_mask, patchify, unpatchify
from policy_server.model.text import Tokenizer
from policy_server.model.vision import CLIP_MEAN, CLIP_STD
from policy_server.training.data import CacheLike, WindowIndex, WindowReader
from policy_server.training.features_cache import FeatureCache
from policy_server.training.loader import collate, to_train_batch

PANEL_SCALE = 3  # 64 px -> 192 px panels
TITLES = ("frame t", "t+3 dynamic (teacher)", "t+3 dynamic (dream)", "depth t+3 (teacher)", "depth t+3 (dream)")


@dataclass
class Dream:
    """One frame's panels per camera: uint8 RGB (R, R, 3) each, in TITLES order."""

    frame: int
    panels: dict[str, list[np.ndarray]]


def _rgb(clip_normalised: torch.Tensor) -> np.ndarray:
    """(3, R, R) CLIP-normalised -> (R, R, 3) uint8."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return (((clip_normalised.float().cpu() * std + mean).clamp(0, 1)) * 255).round().byte().permute(1, 2, 0).numpy()


def _lit(image: np.ndarray, mask: np.ndarray, patch: int) -> np.ndarray:
    """Dim every patch outside the (grid * grid,) patch mask to a third, so the dynamic region stands out."""
    grid = math.isqrt(mask.size)
    full = np.kron(mask.reshape(grid, grid), np.ones((patch, patch)))[..., None]
    return (image * (full + (1 - full) / 3)).astype(np.uint8)


def _depth_colours(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Metres -> turbo colours on [lo, hi]; 0 (no data) black."""
    scaled = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    return np.where((depth > 0)[..., None], rgb, 0).astype(np.uint8)


@torch.no_grad()
def dream(model: DreamVLA, norm: Normalization, cache: CacheLike, text_ids: np.ndarray, episode: int,
          frame: int) -> Dream:
    """Run the model with its decoders on the window that ends at `frame` of `episode` (a shorter window at the
    start of an episode, as serving has) and render what it predicts for frame + 3."""
    cfg, p, g = model.cfg, model.cfg.vision.patch_size, model.cfg.dream_queries_per_view
    start, length = cache.episodes[episode]
    if not 0 <= frame < length:
        raise ValueError(f"episode {episode} has frames 0..{length - 1}, not {frame}")
    t0 = max(0, frame - cfg.sequence_length + 1)
    index = WindowIndex(np.array([0]), np.array([episode]), np.array([t0]))
    reader = WindowReader([cache], index, cfg, [text_ids], norm, augment=False)
    batch = to_train_batch(collate([reader.read(0)]), cfg, torch.device("cpu"))
    w = frame - t0 + 1  # frames the model sees, the newest last
    images = {c: x[:, :w] for c, x in batch.images.items()}
    frames = model.encode_frame(batch.state[0, :w], {c: x[0] for c, x in images.items()})[None]
    outputs = model.query_outputs(model.run_backbone(model.encode_text(batch.text_ids), frames))
    panels = {}
    for i, cam in enumerate(cfg.cameras):
        now, future = batch.images[cam][0, w - 1], batch.future_images[cam][0, w - 1]  # (3, R, R)
        mask = flow_motion_mask(batch.tracks[cam][0, w - 1 : w], cfg.vision.grid, cfg.loss.flow_threshold_px,
                                dilate=i == 0)[0].numpy()
        queries = outputs["dynamic"][:, w - 1, i * g : (i + 1) * g]  # (1, G, H)
        pred = model.decoders["dynamic"](queries)  # (1, N, p*p*3) standardised patches
        real = patchify(future[None], p)
        mean, spread = real.mean(-1, keepdim=True), (real.var(-1, keepdim=True) + 1e-6).sqrt()
        dreamt = _rgb(unpatchify(pred * spread + mean, p, 3)[0])
        depth_pred = unpatchify(depth_metres(model.decoders["depth"](outputs["depth"][:, w - 1, i * g : (i + 1) * g]),
                                             cfg.decoder), p, 1)[0, 0].numpy()
        depth_true = batch.future_depth[cam][0, w - 1, 0].numpy()
        valid = depth_true[depth_true > 0]
        lo, hi = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 1.0)
        panels[cam] = [_rgb(now), _lit(_rgb(future), mask, p), _lit(dreamt, mask, p),
                       _depth_colours(depth_true, lo, hi), _depth_colours(np.clip(depth_pred, 1e-3, None), lo, hi)]
    return Dream(frame, panels)


def render(d: Dream, title: str) -> np.ndarray:
    """One RGB picture: a header, then a labelled row of panels per camera."""
    rows = []
    for cam, panels in d.panels.items():
        big = [cv2.resize(x, None, fx=PANEL_SCALE, fy=PANEL_SCALE, interpolation=cv2.INTER_NEAREST) for x in panels]
        for img, label in zip(big, TITLES, strict=True):
            cv2.putText(img, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        row = np.concatenate([np.pad(x, ((2, 2), (2, 2), (0, 0))) for x in big], axis=1)
        label = np.zeros((18, row.shape[1], 3), np.uint8)
        cv2.putText(label, cam, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        rows += [label, row]
    header = np.zeros((22, rows[0].shape[1], 3), np.uint8)
    cv2.putText(header, f"{title}  frame {d.frame}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.concatenate([header, *rows], axis=0)


def load_dreamer(checkpoint: Path) -> tuple[DreamVLA, Normalization, Tokenizer]:
    """The checkpoint with its decoders, in eval mode; refuses one exported without them or without the dynamic
    and depth heads."""
    model, meta, tokenizer = load_checkpoint(checkpoint, with_decoders=True)
    missing = {"dynamic", "depth"} - set(meta.model.dream)
    if missing:
        raise ValueError(f"{checkpoint} has no {sorted(missing)} <dream> queries to show (dream: {meta.model.dream})")
    return model.eval(), meta.normalization, tokenizer


def write_dreams(checkpoint: Path, dataset: Path, episode: int, frames: list[int] | None, out: Path) -> list[Path]:
    """PNGs of `frames` (default: four spread over the episode) of one episode of `dataset`'s feature cache."""
    model, norm, tokenizer = load_dreamer(checkpoint)
    cache = FeatureCache.open(dataset, model.cfg)
    if cache.tracks is None or cache.depth is None:
        raise ValueError(f"{cache.root} was built without tracks or depth: rebuild it with dv-features")
    if not 0 <= episode < len(cache.episodes):
        raise ValueError(f"{dataset} has episodes 0..{len(cache.episodes) - 1}, not {episode}")
    length = cache.episodes[episode][1]
    if not frames:
        frames = sorted({int(f) for f in np.linspace(0, length - 1 - model.cfg.future_steps, 4)})
    text_ids = tokenizer(list(cache.instructions)).numpy()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in frames:
        title = f"{cache.instructions[episode]!r} ep {episode}"
        picture = render(dream(model, norm, cache, text_ids, episode, f), title)
        path = out / f"dream_ep{episode:03d}_frame{f:03d}.png"
        cv2.imwrite(str(path), picture[..., ::-1])
        written.append(path)
    return written
