"""Multipart send and receive for the wire's sockets, without pyzmq's per-frame Python overhead.

pyzmq's `send_multipart` combines `SNDMORE | flags` as Python `enum.Flag`s for every frame, and its
`recv_multipart` asks `getsockopt(RCVMORE)` after every frame; on a 5-frame `infer` that was about half
the CPU time of the socket calls themselves. Here the flags are plain ints and `Frame.more` (already read
by libzmq with the frame) says whether another part follows. Semantics are pyzmq's: a multipart message
is delivered whole or not at all, so only the first part can raise `zmq.Again` under NOBLOCK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """`sock.send_multipart(frames, flags, copy=False)`: buffers are handed to libzmq without a copy (pyzmq
    still copies those under its `copy_threshold`, where a copy is cheaper than tracking the buffer)."""
    more = SNDMORE | flags
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, more if i < last else flags, copy=False)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """`sock.recv_multipart(flags, copy=False)`: the parts of one message as zero-copy `zmq.Frame`s."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame)
    return frames
