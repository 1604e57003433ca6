"""Serving-side inference: per-episode history cache, newest-frame-only encoding, precision policy.

The engine knows nothing of sockets or sessions' lifetimes; the server owns those and keeps one
`EpisodeHistory` per robot session. It takes observations as the wire carries them (`WireObservation`: raw
RGB frames and the state in robot units) and turns them into the model's tensors itself (`_frame_inputs`).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dreamvla_client.conventions import STATE_DIM
from dreamvla_client.protocol import WireObservation
from policy_server.model.checkpoint import CheckpointMeta, load_checkpoint
from policy_server.model.dreamvla import Attention, DreamVLA
from policy_server.model.text import Tokenizer
from policy_server.model.vision import preprocess_images
from policy_server.serving.sampler_graph import install_sampler_graphs

Precision = Literal["bf16", "fp32"]


@dataclass
class EpisodeHistory:
    """One episode's instruction token and the A tokens of its most recent frames (at most S)."""

    instruction: str
    text: torch.Tensor  # (1, H)
    frames: deque[torch.Tensor]  # each (A-1, H); maxlen = the model's sequence length

    def checkpoint(self) -> tuple[torch.Tensor, ...]:
        """The frames as they are now (references, no copy), for `rollback`."""
        return tuple(self.frames)

    def rollback(self, frames: tuple[torch.Tensor, ...]) -> None:
        """Back to a `checkpoint`: the frames appended since leave the cache, and a frame they pushed out
        of a full window comes back, so the next step attends to exactly what it would have without them."""
        self.frames.clear()
        self.frames.extend(frames)


def default_precision(device: torch.device) -> Precision:
    return "bf16" if device.type == "cuda" else "fp32"


class PolicyEngine:
    """DreamVLA without knowledge decoders, ready for per-step serving."""

    def __init__(self, model: DreamVLA, meta: CheckpointMeta | None, tokenizer: Tokenizer, *,
                 device: str | torch.device = "cpu", precision: Precision | None = None, prune: bool = True,
                 attention: Attention = "sdpa", sampler_graphs: bool | None = None) -> None:
        """`prune`: the backbone sees every frame's context tokens but only the newest frame's queries (exact,
        about half the tokens; False runs the full window as training does). `attention="flex"`: FlexAttention
        under a block mask, compiled on CUDA (off by default until timed on a GPU: `dv-bench model`).
        `sampler_graphs`: replay the 10-step diffusion sampler from one CUDA graph per batch size (None: on
        exactly when the device is CUDA; see policy_server/serving/sampler_graph.py)."""
        if model.decoders is not None:
            raise ValueError("the serving engine takes a model built without knowledge decoders")
        if attention == "flex" and not prune:
            raise ValueError("attention='flex' serves the pruned sequence only (prune=True)")
        self.device = torch.device(device)
        self.precision = precision or default_precision(self.device)
        self.prune, self.attention = prune, attention
        self.model = model.to(self.device).eval()
        self.sampler_graphs = install_sampler_graphs(self.model.action_head, self.device, sampler_graphs)
        self.meta, self.tokenizer, self.cfg = meta, tokenizer, model.cfg

    @classmethod
    def from_checkpoint(cls, directory: Path, *, device: str = "cpu", precision: Precision | None = None,
                        attention: Attention = "sdpa", sampler_graphs: bool | None = None) -> PolicyEngine:
        model, meta, tokenizer = load_checkpoint(directory, with_decoders=False)
        return cls(model, meta, tokenizer, device=device, precision=precision, attention=attention,
                   sampler_graphs=sampler_graphs)

    @contextlib.contextmanager
    def inference_context(self) -> Iterator[None]:
        """No autograd, and bf16 autocast when that is the precision: every model call goes through here."""
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    yield
            else:
                yield

    def _frame_inputs(self, observations: list[WireObservation]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stack N observations into model inputs: state (N, 7), images {camera: (N, 3, R, R)}."""
        size = self.cfg.vision.image_size
        images = {}
        for cam in self.cfg.cameras:
            if any(cam not in o.images for o in observations):
                raise KeyError(f"observation lacks camera {cam!r} (model cameras: {list(self.cfg.cameras)})")
            raw = torch.from_numpy(np.stack([o.images[cam] for o in observations])).to(self.device)
            images[cam] = preprocess_images(raw, size)
        states = np.stack([np.asarray(o.state, dtype=np.float32).reshape(STATE_DIM) for o in observations])
        if self.meta is not None:
            states = self.meta.normalization.state_to_model(states)
        return torch.from_numpy(states).to(self.device), images

    def start_episode(self, instruction: str) -> EpisodeHistory:
        """Encode the instruction once; it is the same at every timestep of the episode."""
        ids = self.tokenizer([instruction]).to(self.device)
        with self.inference_context():
            text = self.model.encode_text(ids)
        return EpisodeHistory(instruction, text, deque(maxlen=self.cfg.sequence_length))

    def encode(self, observations: list[WireObservation]) -> torch.Tensor:
        """(N, A-1, H) tokens of N frames in one encoder pass."""
        state, images = self._frame_inputs(observations)
        with self.inference_context():
            return self.model.encode_frame(state, images)

    def step(self, history: EpisodeHistory, obs: WireObservation, *, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> np.ndarray:
        """Append the newest frame to the history and return its (3, 7) chunk in model units."""
        history.frames.append(self.encode([obs])[0])  # the only encoder work of a cached step
        return self._predict(history.text, torch.stack(list(history.frames)), noise, generator)

    def step_recompute(self, instruction: str, window: list[WireObservation], *, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> np.ndarray:
        """The released code's way: re-encode text and every frame of the window at each step."""
        history = self.start_episode(instruction)
        frames = self.encode(window[-self.cfg.sequence_length :])
        return self._predict(history.text, frames, noise, generator)

    def step_batch(self, histories: list[EpisodeHistory], observations: list[WireObservation],
                   noises: list[torch.Tensor]) -> tuple[list[np.ndarray], dict[str, float]]:
        """One step for several episodes at once (micro-batching across robots sharing a GPU).

        Encoding and diffusion batch over all; the backbone batches episodes whose windows have the
        same length (all of them once past the first S steps). Each episode draws its own noise
        (1, 3, 7), so a reply does not depend on who else was in the batch. Returns the chunks in
        model units and the seconds spent per stage.
        """
        timing: dict[str, float] = {}
        start = time.perf_counter()
        for history, frame in zip(histories, self.encode(observations), strict=True):
            history.frames.append(frame)
        timing["encode"] = time.perf_counter() - start
        start = time.perf_counter()
        cond = [torch.empty(0)] * len(histories)
        groups: dict[int, list[int]] = {}
        for i, h in enumerate(histories):
            groups.setdefault(len(h.frames), []).append(i)
        with self.inference_context():
            for members in groups.values():
                text = torch.cat([histories[i].text for i in members])  # (n, H)
                frames = torch.stack([torch.stack(list(histories[i].frames)) for i in members])  # (n, k, A-1, H)
                out = self.model.action_condition(text, frames, prune=self.prune, attention=self.attention)
                for i, c in zip(members, out, strict=True):
                    cond[i] = c
            timing["backbone"] = time.perf_counter() - start
            start = time.perf_counter()
            actions = self.model.action_head.sample(torch.stack(cond).float(), noise=torch.cat(noises))
        timing["diffusion"] = time.perf_counter() - start
        return list(actions.float().cpu().numpy()), timing

    def _predict(self, text: torch.Tensor, frames: torch.Tensor, noise: torch.Tensor | None,
                 generator: torch.Generator | None) -> np.ndarray:
        with self.inference_context():
            actions = self.model.predict(text, frames[None], noise=noise, generator=generator,  # frames (k, A-1, H)
                                         prune=self.prune, attention=self.attention)
        return actions[0].float().cpu().numpy()
