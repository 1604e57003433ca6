"""Wire protocol v1 between the robot PC and `dv-serve`: message schemas and the frame codec.

Torch-free on purpose: the robot PC imports this module. `docs/protocol.md` is the normative text;
this module is its reference implementation.

A message is one ZeroMQ multipart message (the ROUTER's identity envelope aside):
    frame 0      msgpack map: {"v": 1, "type": ..., ...fields}; arrays appear in it as descriptors
                 {"$nd": i, "dtype": "uint8", "shape": [...]} pointing at frame i + 1
    frame 1..n   the raw C-order bytes of array i (zero-copy on both ends)
Nothing on this path ever unpickles: only msgpack primitives and allow-listed numeric dtypes decode.
Authentication and encryption are the transport's (ZeroMQ CURVE, `bind_policy`), not the codec's.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Annotated, Any, Literal

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dreamvla_client.conventions import ACTION_CONVENTION, GRIPPER_CONVENTION

PROTOCOL_VERSION = 1
MAX_INT64 = 2**63  # seq, seed and capture stamps are ints in [0, 2**63)

# Allow-listed array dtypes (wire name -> little-endian numpy dtype). Anything else is refused.
DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("|u1"),
    "uint16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}


class Limits(BaseModel):
    """Size limits enforced before and while decoding (a peer over ZMQ_MAXMSGSIZE is disconnected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_message_bytes: int = 16 << 20
    max_header_bytes: int = 64 << 10
    max_arrays: int = 8
    max_array_bytes: int = 8 << 20
    max_array_ndim: int = 4
    max_str_len: int = 4096
    max_container_len: int = 64
    max_depth: int = 6


DEFAULT_LIMITS = Limits()


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` is the `error` reply's machine-readable code, and `reply`
    holds the reply's other fields when there are any (the `seq`/`session` it answers, a contract...)."""

    def __init__(self, code: str, message: str, **reply: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.reply = code, message, reply


# Error codes a server sends (docs/protocol.md lists when each is used).
ERROR_CODES = (
    "bad_message", "bad_version", "unknown_type", "invalid_field", "bad_array", "too_large", "non_finite",
    "out_of_range", "contract_mismatch", "not_hello", "stale_seq", "unknown_session", "shutting_down",
    "overloaded", "bad_output", "internal",
)

# ------------------------------------------------------------------------------------- schemas


class Message(BaseModel):
    # strict: no coercion ("5" is not a seq, True is not a version); unknown fields are errors
    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    v: Literal[1] = PROTOCOL_VERSION


class CameraContract(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    height: Annotated[int, Field(gt=0, le=4096)]
    width: Annotated[int, Field(gt=0, le=4096)]
    channels: Literal[3] = 3
    dtype: Literal["uint8"] = "uint8"
    color_order: Literal["rgb", "bgr"] = "rgb"


class RobotContract(BaseModel):
    """What the robot will send and how it will execute what it gets back."""

    model_config = ConfigDict(extra="forbid", strict=True)
    cameras: list[CameraContract]
    state_layout: list[str]
    state_units: Literal["m_rad"] = "m_rad"
    control_rate_hz: Annotated[float, Field(gt=0, le=1000)]
    chunk_length: int
    gripper: str = GRIPPER_CONVENTION
    action_convention: str = ACTION_CONVENTION


Range = Annotated[list[float], Field(min_length=2, max_length=2)]  # [low, high], both included
Stamp = Annotated[int, Field(ge=0, lt=MAX_INT64)]  # seq, seed, a capture time in ns


class ModelContract(BaseModel):
    """What the loaded model expects and returns. `state_range` (one [low, high] per `state_layout` entry)
    bounds what the server accepts as a state; `action_range` (one per action dimension, robot units)
    bounds what it sends as actions: a model output beyond it is a failure, never a chunk."""

    model_config = ConfigDict(extra="forbid", strict=True)
    cameras: list[str]
    image_size: int
    state_layout: list[str]
    state_range: list[Range]
    chunk_length: int
    action_dim: int
    action_range: list[Range]
    action_units: Literal["m_rad"] = "m_rad"
    gripper: str
    action_convention: str
    sequence_length: int

    @model_validator(mode="after")
    def _ranges_fit(self) -> ModelContract:
        for name, ranges, width in (("state_range", self.state_range, len(self.state_layout)),
                                    ("action_range", self.action_range, self.action_dim)):
            if len(ranges) != width:
                raise ValueError(f"{name} has {len(ranges)} entries for {width} values")
            if not all(math.isfinite(lo) and math.isfinite(hi) and lo <= hi for lo, hi in ranges):
                raise ValueError(f"{name} entries must be finite [low, high] with low <= high")
        return self


class Hello(Message):
    type: Literal["hello"] = "hello"
    client_id: Annotated[str, Field(min_length=1, max_length=128)]
    contract: RobotContract


class HelloAck(Message):
    type: Literal["hello_ack"] = "hello_ack"
    model_id: str
    checkpoint_hash: str
    normalization_hash: str
    contract: ModelContract


class Reset(Message):
    type: Literal["reset"] = "reset"
    session: Annotated[str, Field(min_length=1, max_length=128)]
    episode_id: Annotated[str, Field(max_length=128)]
    instruction: Annotated[str, Field(max_length=1024)]
    seed: Stamp | None = None  # diffusion noise seed, for reproducible runs


class ResetAck(Message):
    type: Literal["reset_ack"] = "reset_ack"
    session: str
    episode_id: str


class WireObservation(BaseModel):
    """One observation as an `infer` request carries it: RGB uint8 (H, W, 3) per declared camera and the state
    vector (dreamvla_client.conventions.STATE_LAYOUT) in robot units. The serving engine takes it as it is."""

    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    images: dict[str, np.ndarray]
    state: np.ndarray


class Infer(Message):
    type: Literal["infer"] = "infer"
    session: Annotated[str, Field(min_length=1, max_length=128)]
    seq: Stamp
    capture_ts_ns: dict[str, Stamp]  # per stream ("state" and each camera), robot monotonic clock
    observation: WireObservation


class Chunk(Message):
    type: Literal["chunk"] = "chunk"
    session: str
    seq: int
    capture_ts_ns: dict[str, int]
    actions: np.ndarray  # (chunk_length, 7) float32, robot units
    timing_ms: dict[str, float]


class Ping(Message):
    type: Literal["ping"] = "ping"
    client_ts_ns: int


class Pong(Message):
    type: Literal["pong"] = "pong"
    client_ts_ns: int
    server_ts_ns: int  # server monotonic clock, for the client's offset estimate
    health: Literal["ok", "shutting_down"]
    load: dict[str, float]


class StatsRequest(Message):
    type: Literal["stats"] = "stats"


class Stats(Message):
    type: Literal["stats_reply"] = "stats_reply"
    stages_ms: dict[str, dict[str, float]]  # stage -> {"p50", "p95", "p99", "count"}
    counters: dict[str, int]


class Error(Message):
    type: Literal["error"] = "error"
    code: str
    message: str
    seq: int | None = None
    session: str | None = None
    contract: ModelContract | None = None  # contract_mismatch: the model's contract, as hello_ack would carry it
    fields: list[str] | None = None  # contract_mismatch: the robot contract's fields that differ from it


REQUESTS: tuple[type[Message], ...] = (Hello, Reset, Infer, Ping, StatsRequest)  # what a server accepts
REPLIES: tuple[type[Message], ...] = (HelloAck, ResetAck, Chunk, Pong, Stats, Error)  # what a client accepts
MESSAGES: dict[str, type[Message]] = {m.model_fields["type"].default: m for m in REQUESTS + REPLIES}

# --------------------------------------------------------------------------------------- codec

DESCRIPTOR_KEYS = frozenset(("$nd", "dtype", "shape"))


_SCALARS = (str, int, float, bool, type(None), bytes)  # what msgpack packs as is
_SCALAR_TYPES = frozenset(_SCALARS)
# dtype -> wire name, both byte orders (numpy's `dtype.name` is Python code, slow enough to show per frame)
_WIRE_NAMES = {dt.newbyteorder(order): name for name, dt in DTYPES.items() for order in "<>"}


def _wire_array(value: np.ndarray, frames: list[Any]) -> dict[str, Any]:
    """An array's descriptor; its C-order buffer (no copy when it is already one) goes to `frames`."""
    name = _WIRE_NAMES.get(value.dtype)  # byte order aside: '>f4' is float32 too and is converted below
    if name is None:
        raise ProtocolError("bad_array", f"dtype {value.dtype} is not one of {sorted(DTYPES)}")
    arr = value.astype(DTYPES[name], order="C", copy=False)  # keeps 0-d shapes, unlike ascontiguousarray
    frames.append(memoryview(arr).cast("B") if arr.size else b"")
    return {"$nd": len(frames) - 1, "dtype": name, "shape": list(arr.shape)}


def _to_wire(value: Any, frames: list[Any]) -> Any:
    """A message's value as msgpack primitives: nested models become maps of their fields (in field order,
    as `model_dump` gives them) and numpy arrays descriptors, their buffers appended to `frames`. One walk
    over the model's own attributes: `model_dump` followed by a second walk cost twice as much."""
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return value
    if kind is dict:
        return {k: v if type(v) in _SCALAR_TYPES else _to_wire(v, frames) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SCALAR_TYPES else _to_wire(v, frames) for v in value]
    if isinstance(value, np.ndarray):
        return _wire_array(value, frames)
    if isinstance(value, BaseModel):
        return {k: v if type(v) in _SCALAR_TYPES else _to_wire(v, frames) for k, v in value.__dict__.items()}
    if isinstance(value, dict):
        return {k: _to_wire(v, frames) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_wire(v, frames) for v in value]
    return value  # a scalar's subclass (np.float64 is a float): msgpack packs it as its base


def encode_parts(message: Message) -> tuple[dict[str, Any], list[Any]]:
    """(header map, array buffers): `encode` before its header is packed, for a sender that still has a
    number to put in the header (the server's `send` stage is the time this took)."""
    buffers: list[Any] = []
    return _to_wire(message, buffers), buffers


def pack(header: dict[str, Any], buffers: list[Any]) -> list[Any]:
    """A header map and its array buffers -> frames ready for `socket.send_multipart(frames, copy=False)`."""
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def encode(message: Message) -> list[Any]:
    """Message -> frames ready for `socket.send_multipart(frames, copy=False)`."""
    return pack(*encode_parts(message))


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("bad_message", f"msgpack extension type {code} is not allowed")


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack's map hook: a map that names a key twice is refused (a dict would keep the last silently)."""
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        keys = [k for k, _ in pairs]
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ProtocolError("bad_message", f"map key {twice!r} appears more than once")
    return mapping


def _check_structure(value: Any, limit: int, level: int = 0) -> None:
    """Nesting within `limit`, and str keys only (msgpack's strict_map_key lets bin keys through).
    Only containers are visited: a container at `limit` must be empty (its children would be deeper)."""
    if level > limit:
        raise ProtocolError("bad_message", f"nesting deeper than {limit}")
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                raise ProtocolError("bad_message", f"map key {key!r} is not a str")
        children: Any = value.values()
    elif type(value) is list:
        children = value
    else:
        return
    if value and level == limit:
        raise ProtocolError("bad_message", f"nesting deeper than {limit}")
    for child in children:
        if type(child) is dict or type(child) is list:
            _check_structure(child, limit, level + 1)


def _decode_array(desc: dict[str, Any], frames: Sequence[bytes], limits: Limits) -> np.ndarray:
    if desc.keys() != DESCRIPTOR_KEYS:
        raise ProtocolError("bad_array", f"array descriptor needs exactly $nd, dtype, shape; got {sorted(desc)}")
    index, dtype, shape = desc["$nd"], desc["dtype"], desc["shape"]
    if type(index) is not int or not 0 <= index < len(frames):
        raise ProtocolError("bad_array", f"array frame index {index!r} out of range (message has {len(frames)})")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError("bad_array", f"dtype {dtype!r} is not allowed (allowed: {sorted(DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > limits.max_array_ndim
            or any(type(d) is not int or d < 0 for d in shape)):
        raise ProtocolError("bad_array", f"shape {shape!r} must be a list of at most "
                                         f"{limits.max_array_ndim} non-negative ints")
    if any(d > limits.max_array_bytes for d in shape):  # bounds each dim too: 0 x 2**63 has 0 bytes
        raise ProtocolError("too_large", f"shape {shape!r} has a dimension over {limits.max_array_bytes}")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if nbytes > limits.max_array_bytes:
        raise ProtocolError("too_large", f"array of {nbytes} bytes exceeds {limits.max_array_bytes}")
    buf = frames[index]
    if len(buf) != nbytes:
        raise ProtocolError("bad_array", f"array frame holds {len(buf)} bytes; dtype {dtype} shape {shape} "
                                         f"needs {nbytes}")
    return np.frombuffer(buf, dtype=DTYPES[dtype]).reshape(shape)


def _is_descriptor(value: dict[str, Any]) -> bool:
    """A map with `$nd`, or a non-empty map with no key but $nd, dtype and shape: a descriptor, maybe a
    broken one (so a descriptor that lost its `$nd` is a `bad_array`, not an unexplained schema error)."""
    return "$nd" in value or (bool(value) and value.keys() <= DESCRIPTOR_KEYS)


def _decode_arrays(value: Any, frames: Sequence[bytes], limits: Limits) -> Any:
    if type(value) is dict:
        if _is_descriptor(value):
            return _decode_array(value, frames, limits)
        return {k: _decode_arrays(v, frames, limits) if type(v) is dict or type(v) is list else v
                for k, v in value.items()}
    if type(value) is list:
        return [_decode_arrays(v, frames, limits) if type(v) is dict or type(v) is list else v for v in value]
    return value


def _readable_ids(header: dict[str, Any]) -> dict[str, Any]:
    """The header's `seq` and `session` where they are well-formed, for an error reply to echo even when
    something else in the message is wrong (a pipelining client matches replies by them)."""
    ids: dict[str, Any] = {}
    seq, session = header.get("seq"), header.get("session")
    if type(seq) is int and 0 <= seq < MAX_INT64:
        ids["seq"] = seq
    if isinstance(session, str) and 1 <= len(session) <= 128:
        ids["session"] = session
    return ids


def _unpack(head: Any, limits: Limits) -> Any:
    """Frame 0 unpacked, every map's keys checked unique. The fast path parses once without a hook: a header
    that packs back to its own bytes names no key twice (a dict cannot), which is what this codec's encoders
    send. Anything else (another encoder's choices, a key twice, broken bytes) is parsed again map by map,
    so its result or error is the hook's."""
    options: dict[str, Any] = dict(
        raw=False, strict_map_key=True, use_list=True, ext_hook=_reject_ext, timestamp=0,
        max_str_len=limits.max_str_len, max_bin_len=limits.max_str_len,
        max_array_len=limits.max_container_len, max_map_len=limits.max_container_len, max_ext_len=0,
    )
    try:
        raw = msgpack.unpackb(head, **options)
        if isinstance(raw, dict) and msgpack.packb(raw, use_bin_type=True) == head:
            return raw
    except Exception:  # reported by the careful parse below, with the message it gives
        pass
    try:
        return msgpack.unpackb(head, object_pairs_hook=_unique_keys, **options)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises FormatError, ExtraData, StackError, ValueError, ...
        raise ProtocolError("bad_message", f"not a valid msgpack header: {type(exc).__name__}: {exc}") from None


def _parse_header(head: Any, limits: Limits) -> dict[str, Any]:
    """Frame 0 -> a map of msgpack primitives with str keys, each key once, within the limits."""
    raw = _unpack(head, limits)
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", f"header must be a msgpack map, got {type(raw).__name__}")
    _check_structure(raw, limits.max_depth)
    return raw


def _validate(raw: dict[str, Any], frames: Sequence[bytes], limits: Limits,
              accept: Collection[type[Message]] | None, expect: type[Message] | None) -> Message:
    """A parsed header (and its array frames) -> the message: version, type, arrays, schema, in that order."""
    if type(raw.get("v")) is not int or raw["v"] != PROTOCOL_VERSION:  # True == 1 and 1.0 == 1 in Python
        raise ProtocolError("bad_version", f"protocol version {raw.get('v')!r} is not {PROTOCOL_VERSION}")
    kind = raw.get("type")
    schema = MESSAGES.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}")
    if accept is not None and schema not in accept:
        names = ", ".join(m.model_fields["type"].default for m in accept)
        raise ProtocolError("unknown_type", f"{kind!r} is not accepted here (accepted: {names})")
    if expect is not None and schema is not expect and schema is not Error:
        raise ProtocolError("unknown_type", f"expected {expect.model_fields['type'].default!r}, got {kind!r}")
    payload = _decode_arrays(raw, frames, limits)
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError("invalid_field", f"{kind}: {where}: {first['msg']}") from None


def decode(frames: Sequence[bytes], *, limits: Limits = DEFAULT_LIMITS,
           accept: Collection[type[Message]] | None = None, expect: type[Message] | None = None) -> Message:
    """Frames (bytes or buffers, e.g. `zmq.Frame.buffer`) -> validated message, or ProtocolError with the
    code to reply with (and, once the header parsed, its readable `seq`/`session` in `reply`). `accept`
    limits the message types (a server accepts REQUESTS only). Arrays are read-only views on the frames:
    no copy is made."""
    if not frames:
        raise ProtocolError("bad_message", "empty message")
    total = sum(len(f) for f in frames)
    if total > limits.max_message_bytes:
        raise ProtocolError("too_large", f"message of {total} bytes exceeds {limits.max_message_bytes}")
    head = frames[0]
    if len(head) > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header of {len(head)} bytes exceeds {limits.max_header_bytes}")
    if len(frames) - 1 > limits.max_arrays:
        raise ProtocolError("too_large", f"{len(frames) - 1} array frames exceed {limits.max_arrays}")
    raw = _parse_header(head, limits)
    try:
        return _validate(raw, frames[1:], limits, accept, expect)
    except ProtocolError as exc:
        exc.reply = _readable_ids(raw) | exc.reply
        raise
