"""The torch side of `dv-serve`: DreamVLA's `PolicyEngine` behind the server's `Backend` interface.

It owns what is model-specific in serving: each session's history cache and noise generator, the
contract announced at `hello` (read from the checkpoint), and the model-to-robot unit conversion.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from dreamvla_client.contract import physical_state_range
from dreamvla_client.protocol import ModelContract, WireObservation
from policy_server.serving import engine as eng

# The contract's action range, in model units (times the checkpoint's action scale): beyond it an output is
# a numerical failure (an overflow, a poisoned history), not an action. It is loose on purpose: a trained
# model stays near its nominal +-1 (which the robot's envelope clips to), an untrained one within about +-30.
OUTPUT_LIMIT_UNITS = 100.0


@dataclass
class EngineSession:
    """One episode: its history cache and the generator its diffusion noise comes from, so that a
    seeded episode's chunks depend only on its own inputs, never on who shared its batches. `undo` is
    both as they were before the last step, for `discard_step`."""

    history: eng.EpisodeHistory
    generator: torch.Generator
    undo: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None

    def begin_step(self) -> None:
        self.undo = (self.history.checkpoint(), self.generator.get_state())

    def undo_step(self) -> None:
        """Forget the last step: its frame leaves the history and its noise draw is returned."""
        if self.undo is not None:
            frames, generator_state = self.undo
            self.history.rollback(frames)
            self.generator.set_state(generator_state)
            self.undo = None


class EngineBackend:
    """`Backend` over a `PolicyEngine` loaded from a checkpoint (whose meta carries the contract)."""

    def __init__(self, engine: eng.PolicyEngine) -> None:
        if engine.meta is None:
            raise ValueError("EngineBackend needs an engine loaded from a checkpoint: its config.json carries "
                             "the cameras, state layout and action normalisation")
        self.engine, meta, cfg = engine, engine.meta, engine.cfg
        self._scale = np.asarray(meta.normalization.action_scale, dtype=np.float32)  # model -> robot units
        self._identity = (f"dreamvla-{cfg.name}", meta.content_hash, meta.normalization_hash)
        self._contract = ModelContract(
            cameras=list(cfg.cameras), image_size=cfg.vision.image_size, state_layout=list(meta.state_layout),
            state_range=physical_state_range(list(meta.state_layout)),
            chunk_length=cfg.action.chunk, action_dim=cfg.action.dim,
            action_range=[[-OUTPUT_LIMIT_UNITS * a, OUTPUT_LIMIT_UNITS * a] for a in map(float, self._scale)],
            gripper=cfg.action.gripper,
            action_convention=f"delta_{cfg.action.frame}_{cfg.action.rotation}",
            sequence_length=cfg.sequence_length,
        )

    def contract(self) -> ModelContract:
        return self._contract

    def identity(self) -> tuple[str, str, str]:
        return self._identity

    def new_session(self, instruction: str, seed: int | None) -> EngineSession:
        seed = secrets.randbits(63) if seed is None else seed
        return EngineSession(self.engine.start_episode(instruction), torch.Generator().manual_seed(seed))

    def discard_step(self, state: EngineSession) -> None:
        state.undo_step()

    def infer_batch(self, states: list[EngineSession], observations: list[WireObservation]
                    ) -> tuple[list[np.ndarray], dict[str, float]]:
        """One engine step per session, all or nothing: if any part fails, every session is left as it was."""
        for s in states:
            s.begin_step()
        try:
            return self._step(states, observations)
        except BaseException:
            for s in states:
                s.undo_step()
            raise

    def _step(self, states: list[EngineSession], observations: list[WireObservation]
              ) -> tuple[list[np.ndarray], dict[str, float]]:
        """Sessions whose cameras send different resolutions cannot share an image tensor, so each
        resolution is its own engine batch (one in the usual fleet)."""
        cfg = self.engine.cfg
        # Each session draws its (1, K, 7) noise from its own generator, one draw per step.
        noises = [torch.randn((1, cfg.action.chunk, cfg.action.dim), generator=s.generator).to(self.engine.device)
                  for s in states]
        groups: dict[tuple, list[int]] = {}
        for i, obs in enumerate(observations):
            groups.setdefault(tuple(obs.images[c].shape for c in cfg.cameras), []).append(i)
        chunks: list[np.ndarray] = [np.empty(0)] * len(states)
        timing: dict[str, float] = {}
        for members in groups.values():
            out, stages = self.engine.step_batch(
                [states[i].history for i in members],
                [observations[i] for i in members],
                [noises[i] for i in members])
            for i, chunk in zip(members, out, strict=True):
                chunks[i] = (chunk * self._scale).astype(np.float32)
            for stage, seconds in stages.items():
                timing[stage] = timing.get(stage, 0.0) + seconds
        return chunks, timing
