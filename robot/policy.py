"""The policy interface the control loop runs, and its three implementations.

openpi's shape (`reset`, `infer`, `close`), so the loop runs a remote DreamVLA, the sim's scripted expert or a
recorded episode without knowing which, through the same timeline and the same safety envelope. `infer` never
raises for a policy failure: it returns a `PolicyFailure` of a known kind, which the loop turns into SAFE-HOLD
or an abort (docs/safety.md, fault matrix rows P1–P13). Chunks are in robot units (metres, radians).
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

import numpy as np

from dreamvla_client.client import ContractMismatch, PolicyClient, PolicyTimeout, ServerError, SessionLost
from dreamvla_client.conventions import ACTION_DIM, STATE_LAYOUT
from dreamvla_client.protocol import CameraContract, RobotContract
from robot.execution import delta_between

FailureKind = Literal["timeout", "session_lost", "server_error", "contract", "internal"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Observation:
    """What the loop captured at one tick. `capture_ns` holds a monotonic stamp per stream: 'state' (read
    first) and each camera. `T_commanded` is the loop's last commanded target: local policies anchor their
    deltas on it; it is never sent to a server."""

    state: np.ndarray
    images: Mapping[str, np.ndarray]
    capture_ns: Mapping[str, int]
    T_measured: np.ndarray
    T_commanded: np.ndarray

    @property
    def t_ns(self) -> int:
        """When the observation was taken: the proprioception read, which the actions are relative to."""
        return self.capture_ns["state"]

    @property
    def oldest_ns(self) -> int:
        """The capture time of its oldest stream: what its age is measured from."""
        return min(self.capture_ns.values())


@dataclass(frozen=True)
class PolicyChunk:
    """Actions (K, 7) in robot units; `done` when the policy has nothing more to do (scripted, replay)."""

    actions: np.ndarray
    timing_ms: Mapping[str, float] = field(default_factory=dict)
    done: bool = False


@dataclass(frozen=True)
class PolicyFailure:
    kind: FailureKind
    message: str


class Policy(Protocol):
    def reset(self, instruction: str) -> PolicyFailure | None:
        """Start an episode."""
        ...

    def infer(self, observation: Observation) -> PolicyChunk | PolicyFailure:
        """The chunk for this observation, or why there is none."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------ remote


def robot_contract(cameras: Mapping[str, tuple[int, int]], rate_hz: float, chunk_length: int) -> RobotContract:
    """What this robot declares at `hello`: camera name -> (height, width), RGB uint8, the state layout."""
    return RobotContract(cameras=[CameraContract(name=n, height=h, width=w) for n, (h, w) in cameras.items()],
                         state_layout=list(STATE_LAYOUT), control_rate_hz=float(rate_hz), chunk_length=chunk_length)


class RemotePolicy:
    """A `dv-serve` policy through the torch-free `PolicyClient` (one session per runner, one episode per reset).

    The client's deadline is the loop's: a reply later than one chunk horizon is a timeout, and the client
    reopens its socket so the late reply can never be read (Lazy Pirate). Not thread-safe: call it from one
    thread (the runner's inference worker).
    """

    def __init__(self, endpoint: str, contract: RobotContract, *, deadline_s: float, key: bytes | None = None,
                 allow_unauthenticated_remote: bool = False, client_id: str = "dv-robot") -> None:
        """`key`: the server's shared key (the key file's bytes, surrounding whitespace stripped). Without one,
        a non-loopback endpoint is refused (ValueError) unless `allow_unauthenticated_remote`."""
        self._client = PolicyClient(endpoint, contract, client_id=client_id, key=key,
                                    allow_unauthenticated_remote=allow_unauthenticated_remote, deadline_s=deadline_s)
        self._session = f"{client_id}-{uuid.uuid4().hex[:8]}"
        self._episode = 0

    def reset(self, instruction: str) -> PolicyFailure | None:
        self._episode += 1
        ack = self._call(lambda: self._client.reset(self._session, f"episode-{self._episode}", instruction))
        return ack if isinstance(ack, PolicyFailure) else None

    def infer(self, observation: Observation) -> PolicyChunk | PolicyFailure:
        captures = dict(observation.capture_ns)
        reply = self._call(lambda: self._client.infer(self._session, dict(observation.images),
                                                      observation.state.astype(np.float32), captures))
        if isinstance(reply, PolicyFailure):
            return reply
        if dict(reply.capture_ts_ns) != captures:
            return PolicyFailure("server_error", f"reply echoes capture stamps {reply.capture_ts_ns}, not {captures}")
        return PolicyChunk(reply.actions, reply.timing_ms)

    def _call(self, call: Callable[[], _T]) -> _T | PolicyFailure:
        """Run a client call and map its exceptions to typed outcomes (ContractMismatch and SessionLost are
        ServerErrors, so they are matched first)."""
        try:
            return call()
        except PolicyTimeout as exc:
            return PolicyFailure("timeout", str(exc))
        except ContractMismatch as exc:
            return PolicyFailure("contract", str(exc))
        except SessionLost as exc:
            return PolicyFailure("session_lost", str(exc))
        except ServerError as exc:
            return PolicyFailure("server_error", str(exc))

    def close(self) -> None:
        self._client.close()


# ------------------------------------------------------------------------------------------------ local


class _TickCounter:
    """Ticks elapsed between observations, so a local policy advances with time whatever the execution mode
    (one step per tick, however many of its actions the loop used)."""

    def __init__(self, rate_hz: float) -> None:
        self._dt_ns = round(1e9 / rate_hz)
        self._last_ns: int | None = None

    def advance(self, t_ns: int) -> int:
        if self._last_ns is None:
            self._last_ns = t_ns
            return 0
        ticks = max(0, round((t_ns - self._last_ns) / self._dt_ns))
        self._last_ns += ticks * self._dt_ns
        return ticks


class Stepper(Protocol):
    """One Cartesian target per tick (the sim's `ScriptedExpert` is one)."""

    @property
    def done(self) -> bool: ...

    def act(self, T_measured: np.ndarray) -> tuple[np.ndarray, bool]:
        """The next absolute target for `ee` and whether the gripper should be open."""
        ...


class ScriptedPolicy:
    """A scripted expert expressed as chunks in the action convention, so the same loop and envelope run it.

    `make_stepper(T_start)` builds the expert at the first observation of an episode (the sim plans from its
    object poses then). Each `infer` advances the expert by the ticks elapsed since the last one and looks
    `chunk_length` steps ahead on a copy; the first delta is taken from the loop's commanded target, so a clamp
    or a dropped action is corrected by the next chunk instead of accumulating.
    """

    def __init__(self, make_stepper: Callable[[np.ndarray], Stepper], rate_hz: float, chunk_length: int = 3) -> None:
        self._make, self._rate_hz, self._chunk_length = make_stepper, rate_hz, chunk_length
        self._stepper: Stepper | None = None
        self._ticks = _TickCounter(rate_hz)

    def reset(self, instruction: str) -> PolicyFailure | None:
        self._stepper, self._ticks = None, _TickCounter(self._rate_hz)
        return None

    def infer(self, observation: Observation) -> PolicyChunk | PolicyFailure:
        start = time.perf_counter()
        if self._stepper is None:
            self._stepper = self._make(observation.T_commanded)
        for _ in range(self._ticks.advance(observation.t_ns)):
            self._stepper.act(observation.T_measured)
        if self._stepper.done:
            return PolicyChunk(np.zeros((0, ACTION_DIM)), done=True)
        ahead = copy.deepcopy(self._stepper)
        actions, T_prev = [], observation.T_commanded
        for _ in range(self._chunk_length):
            T, gripper_open = ahead.act(observation.T_measured)
            actions.append([*delta_between(T_prev, T), 1.0 if gripper_open else 0.0])
            T_prev = T
        return PolicyChunk(np.array(actions), {"infer": (time.perf_counter() - start) * 1e3})

    def close(self) -> None:
        self._stepper = None


class ReplayPolicy:
    """Recorded actions (N, 7) in robot units, replayed one per tick as chunks (offline parity checks: the
    deployed loop, envelope and robot, driven by a demonstration)."""

    def __init__(self, actions: np.ndarray, rate_hz: float, chunk_length: int = 3) -> None:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or len(actions) == 0:
            raise ValueError(f"replay actions must be a non-empty (N, {ACTION_DIM}) array, got shape {actions.shape}")
        self._actions, self._rate_hz, self._chunk_length = actions, rate_hz, chunk_length
        self._index = 0
        self._ticks = _TickCounter(rate_hz)

    def reset(self, instruction: str) -> PolicyFailure | None:
        self._index, self._ticks = 0, _TickCounter(self._rate_hz)
        return None

    def infer(self, observation: Observation) -> PolicyChunk | PolicyFailure:
        self._index += self._ticks.advance(observation.t_ns)
        if self._index >= len(self._actions):
            return PolicyChunk(np.zeros((0, ACTION_DIM)), done=True)
        chunk = self._actions[self._index:self._index + self._chunk_length]
        if len(chunk) < self._chunk_length:  # the recording ends mid-chunk: hold still, gripper as last recorded
            hold = np.zeros((self._chunk_length - len(chunk), ACTION_DIM))
            hold[:, 6] = chunk[-1, 6]
            chunk = np.concatenate([chunk, hold])
        return PolicyChunk(chunk.copy())

    def close(self) -> None:
        return None
