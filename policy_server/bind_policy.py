"""Who may reach a server: loopback by default, a shared key for anything else."""

from __future__ import annotations

import ipaddress

MIN_KEY_BYTES = 16


def is_loopback(endpoint: str) -> bool:
    """True for endpoints only this machine can reach (ipc, inproc, tcp on a loopback address)."""
    scheme, _, address = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface or a host name: possibly public
        return False


def check_bind_policy(bind: str, key: bytes | None) -> None:
    """Refuse what would let anyone on the network drive the robot: a non-loopback bind without a
    shared key, or a key too short to mean anything."""
    if key is None and not is_loopback(bind):
        raise ValueError(f"refusing to bind {bind} without a shared key: anyone who can reach it could "
                         f"drive the robot; bind tcp://127.0.0.1:PORT or give a key (--auth-key-file)")
    if key is not None and len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the shared key has {len(key)} bytes; use at least {MIN_KEY_BYTES}")
