"""A torch-free stand-in policy: the transport tested and benchmarked without a model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from policy_server.protocol import STATE_LAYOUT, ModelContract, Observation


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

    def infer_batch(self, states: list[Any], observations: list[Observation]
                    ) -> tuple[list[np.ndarray], dict[str, float]]:
        if self._delay_s:
            time.sleep(self._delay_s)
        dim = self._contract.action_dim
        return [self._rows * np.asarray(o.state[:dim], dtype=np.float32) for o in observations], {}


def echo_contract(image_size: int = 224) -> ModelContract:
    """The contract `dv-serve --echo` announces: DreamVLA's cameras, state layout and action convention."""
    return ModelContract(
        cameras=["static", "wrist"], image_size=image_size,
        state_layout=list(STATE_LAYOUT),
        chunk_length=3, action_dim=7, gripper="1_open_0_closed",
        action_convention="delta_previous_target_euler_xyz", sequence_length=1,
    )
