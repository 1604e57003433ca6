"""A torch-free stand-in policy: the transport tested and benchmarked without a model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dreamvla_client.contract import physical_state_range
from dreamvla_client.conventions import ACTION_CONVENTION, ACTION_DIM, GRIPPER_CONVENTION, STATE_LAYOUT
from dreamvla_client.protocol import ModelContract, WireObservation


class EchoBackend:
    """A torch-free stand-in policy for transport tests and benchmarks: chunk row k = (k + 1) * state.

    `delay_s` sleeps once per batch, standing in for a model's batch latency (batching benchmarks,
    shutdown tests that need a request in flight)."""

    def __init__(self, contract: ModelContract, *, delay_s: float = 0.0) -> None:
        self._contract, self._delay_s = contract, delay_s
        self._rows = np.arange(1, contract.chunk_length + 1, dtype=np.float32)[:, None]

    def contract(self) -> ModelContract:
        return self._contract

    def identity(self) -> tuple[str, str, str]:
        return "echo", "echo", "echo"

    def new_session(self, instruction: str, seed: int | None) -> None:
        return None  # an echo has no memory

    def discard_step(self, state: Any) -> None:
        return None  # nothing to forget

    def infer_batch(self, states: list[Any], observations: list[WireObservation]
                    ) -> tuple[list[np.ndarray], dict[str, float]]:
        if self._delay_s:
            time.sleep(self._delay_s)
        dim = self._contract.action_dim
        return [self._rows * np.asarray(o.state[:dim], dtype=np.float32) for o in observations], {}


def echo_contract(image_size: int = 224) -> ModelContract:
    """The contract `dv-serve --echo` announces: DreamVLA's cameras, state layout, physical state ranges and
    action convention. Its action range is what the echo returns for states within those ranges."""
    state_range, chunk_length = physical_state_range(list(STATE_LAYOUT)), 3
    return ModelContract(
        cameras=["static", "wrist"], image_size=image_size,
        state_layout=list(STATE_LAYOUT), state_range=state_range,
        chunk_length=chunk_length, action_dim=ACTION_DIM, action_range=echo_action_range(state_range, chunk_length),
        gripper=GRIPPER_CONVENTION, action_convention=ACTION_CONVENTION, sequence_length=1,
    )


def echo_action_range(state_range: list[list[float]], chunk_length: int) -> list[list[float]]:
    """Row k = (k + 1) * state over states within `state_range`: each dimension's extremes at k = 0 or K - 1."""
    return [[min(low, chunk_length * low), max(high, chunk_length * high)] for low, high in state_range]
