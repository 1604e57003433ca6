"""Who may reach a server, and how the shared key secures a connection.

Loopback needs nothing. Anything else needs the shared key: one file on each side, whose bytes (surrounding
whitespace stripped) both ends turn into ZeroMQ CURVE key pairs, so that every connection is encrypted and
authenticated by libzmq (CurveZMQ: per-connection short-term keys, strictly increasing nonces) and a client
without the key never completes the handshake. docs/protocol.md §1.1 gives the derivation and the reasons.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
# HMAC-SHA256(key, label) is each role's 32-byte CURVE secret key; the labels are part of the protocol.
SERVER_LABEL, CLIENT_LABEL = b"dv-serve curve server v1", b"dv-serve curve client v1"
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


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


def _check_key_length(key: bytes | None) -> None:
    if key is not None and len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the shared key has {len(key)} bytes; use at least {MIN_KEY_BYTES}")


def check_bind_policy(bind: str, key: bytes | None) -> None:
    """Refuse what would let anyone on the network drive the robot: a non-loopback bind without a
    shared key, or a key too short to mean anything."""
    if key is None and not is_loopback(bind):
        raise ValueError(f"refusing to bind {bind} without a shared key: anyone who can reach it could "
                         f"drive the robot; bind tcp://127.0.0.1:PORT or give a key (--auth-key-file)")
    _check_key_length(key)


def check_connect_policy(endpoint: str, key: bytes | None, allow_unauthenticated_remote: bool) -> None:
    """The robot's side of the same rule: no plain-text connection beyond this machine unless the caller
    says so by name (the images and the actions would cross the network unauthenticated)."""
    if key is None and not is_loopback(endpoint) and not allow_unauthenticated_remote:
        raise ValueError(f"refusing to connect to {endpoint} without the server's key: anyone on the network "
                         f"could read this robot's cameras and send it actions; give the key file "
                         f"(launch: server.auth_key_file), or pass allow_unauthenticated_remote=True "
                         f"(launch: server.allow_unauthenticated_remote) to accept that")
    _check_key_length(key)


def read_key_file(path: Path) -> bytes:
    """The shared key: the file's bytes with surrounding ASCII whitespace (a trailing newline) stripped."""
    key = path.read_bytes().strip()
    if not key:
        raise ValueError(f"key file {path} is empty")
    return key


@dataclass(frozen=True)
class CurveKeys:
    """Both roles' CURVE key pairs (Z85 text, as libzmq's options take them), derived from the shared key."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


def curve_keys(key: bytes) -> CurveKeys:
    """secret = HMAC-SHA256(key, role label); public = X25519(secret, base point) (libzmq's curve_public)."""
    server_secret, client_secret = (z85.encode(hmac.new(key, label, hashlib.sha256).digest())
                                    for label in (SERVER_LABEL, CLIENT_LABEL))
    return CurveKeys(zmq.curve_public(server_secret), server_secret, zmq.curve_public(client_secret), client_secret)


class _OneClientKey:
    """ZAP credentials: exactly the client public key derived from the shared key."""

    def __init__(self, client_public: bytes) -> None:
        self._client_public = client_public

    def callback(self, domain: str, client_key: bytes) -> bool:
        allowed = hmac.compare_digest(client_key, self._client_public)
        if not allowed:
            log.warning("refused a CURVE client whose key is not derived from the shared key")
        return allowed


def start_authenticator(ctx: zmq.Context, key: bytes) -> ThreadAuthenticator:
    """pyzmq's ZAP handler for `ctx`, admitting only the key's client. Start it before binding: libzmq
    admits every CURVE client of a context that has no ZAP handler."""
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=_OneClientKey(curve_keys(key).client_public))
    return auth


def secure_server(sock: zmq.Socket, key: bytes) -> None:
    keys = curve_keys(key)
    sock.curve_server = True
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public


def secure_client(sock: zmq.Socket, key: bytes) -> None:
    keys = curve_keys(key)
    sock.curve_serverkey = keys.server_public
    sock.curve_publickey = keys.client_public
    sock.curve_secretkey = keys.client_secret
