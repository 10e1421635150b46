"""Moving bytes between server, agents and clients.  The only module that imports zmq.

The server binds a ROUTER socket for agents (CurveZMQ unless explicitly insecure) and a
second ROUTER on a local ipc path for clients (the CLI, the Ansible plugins); access to that
path is guarded by file permissions, as Directord's unix socket was.  Agents connect with a
DEALER and let ZeroMQ reconnect them.  Nothing here knows what a job is: frames go in and out
as bytes, tagged with who sent them and, for agents, which enrolled Curve key they proved.
"""

from __future__ import annotations

import enum
import itertools
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable

import zmq

LINGER_MS = 500


def generate_keypair() -> tuple[str, str]:
    """A new Curve key pair as (public, secret), both Z85 text."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def public_from_secret(secret: str) -> str:
    return zmq.curve_public(secret.encode()).decode()


class Channel(enum.Enum):
    AGENTS = "agents"
    CONTROL = "control"


@dataclass(slots=True)
class Incoming:
    channel: Channel
    peer: bytes  # ZeroMQ routing id, only meaningful for replying
    frame: bytes
    key: str | None  # the Z85 public key the peer authenticated with (None when insecure)


class _AllowList:
    """ZAP credentials provider: a peer may connect only with an enrolled public key."""

    def __init__(self) -> None:
        self._allowed: frozenset[bytes] = frozenset()

    def replace(self, public_keys: Iterable[str]) -> None:
        self._allowed = frozenset(k.encode() for k in public_keys)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        return z85_key in self._allowed


class ServerTransport:
    """The server's two ROUTER sockets and the Curve authenticator in front of the agent one."""

    def __init__(
        self,
        agent_endpoint: str,
        control_endpoint: str,
        *,
        secret_key: str | None,
        allowed_keys: Iterable[str] = (),
    ) -> None:
        self._context = zmq.Context()
        self._auth: Any = None  # zmq.auth.thread.ThreadAuthenticator, imported only by a secure server
        self._allow = _AllowList()
        self.agents = self._context.socket(zmq.ROUTER)
        self.agents.setsockopt(zmq.LINGER, LINGER_MS)
        self.agents.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.agents.setsockopt(zmq.SNDHWM, 0)
        self.agents.setsockopt(zmq.RCVHWM, 0)
        if secret_key is not None:
            # asyncio and friends: only the server needs them, not every agent.  A `from` import,
            # since `import zmq.auth.thread` here would make `zmq` a local name of this whole method.
            from zmq.auth.thread import ThreadAuthenticator

            self._allow.replace(allowed_keys)
            self._auth = ThreadAuthenticator(self._context)
            self._auth.start()
            self._auth.configure_curve_callback(domain="*", credentials_provider=self._allow)
            self.agents.curve_secretkey = secret_key.encode()
            self.agents.curve_publickey = zmq.curve_public(secret_key.encode())
            self.agents.curve_server = True
        self.agents.bind(agent_endpoint)
        self.agent_endpoint = self.agents.getsockopt_string(zmq.LAST_ENDPOINT)
        self.control = self._context.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, LINGER_MS)
        self.control.setsockopt(zmq.SNDHWM, 0)
        self.control.bind(control_endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self.agents, zmq.POLLIN)
        self._poller.register(self.control, zmq.POLLIN)

    def allow(self, public_keys: Iterable[str]) -> None:
        """Replace the set of agent keys the authenticator accepts (enroll / revoke)."""
        self._allow.replace(public_keys)

    def poll(self, timeout_ms: int) -> list[Incoming]:
        """Everything readable now (up to a batch), waiting at most timeout_ms for the first."""
        ready = dict(self._poller.poll(timeout_ms))
        received: list[Incoming] = []
        for socket, channel in ((self.agents, Channel.AGENTS), (self.control, Channel.CONTROL)):
            if socket not in ready:
                continue
            for _ in range(1000):
                try:
                    parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if len(parts) != 2:
                    # A DEALER sends exactly one frame; more or fewer is a broken peer.
                    received.append(Incoming(channel, parts[0].bytes, b"", None))
                    continue
                key = None
                if channel is Channel.AGENTS and self._auth is not None:
                    key = str(parts[1].get("User-Id"))
                received.append(Incoming(channel, parts[0].bytes, parts[1].bytes, key))
        return received

    def send(self, channel: Channel, peer: bytes, frame: bytes) -> None:
        socket = self.agents if channel is Channel.AGENTS else self.control
        try:
            socket.send_multipart((peer, frame), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the peer is gone; ROUTER drops silently and liveness tracking notices

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
        self.agents.close()
        self.control.close()
        self._context.term()


class DealerConnection:
    """A DEALER socket to the server, optionally Curve-authenticated, with a thread-safe outbox.

    Worker threads call `post()`; the thread that owns the socket drains posted frames in
    `poll()` and sends them, since a ZeroMQ socket must only be used by one thread.
    """

    _counter = itertools.count()

    def __init__(
        self,
        endpoint: str,
        *,
        server_public: str | None = None,
        keypair: tuple[str, str] | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._server_public = server_public
        self._keypair = keypair
        self._context = context or zmq.Context.instance()
        self._outbox_address = f"inproc://outbox-{os.getpid()}-{next(self._counter)}"
        self._outbox = self._context.socket(zmq.PULL)
        self._outbox.bind(self._outbox_address)
        self._local = threading.local()
        self._socket: zmq.Socket | None = None
        self.connect()

    def connect(self) -> None:
        """(Re)create the DEALER; used at start and to reset a connection the server forgot."""
        if self._socket is not None:
            self._socket.close(linger=0)
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, LINGER_MS)
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.setsockopt(zmq.RECONNECT_IVL, 100)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self._server_public is not None and self._keypair is not None:
            public, secret = self._keypair
            socket.curve_serverkey = self._server_public.encode()
            socket.curve_publickey = public.encode()
            socket.curve_secretkey = secret.encode()
        socket.connect(self._endpoint)
        self._socket = socket
        self._poller = zmq.Poller()
        self._poller.register(socket, zmq.POLLIN)
        self._poller.register(self._outbox, zmq.POLLIN)

    def send(self, frame: bytes) -> bool:
        """Send now, from the owning thread only; False when the frame could not be queued.

        ZeroMQ queues frames while the peer is away; callers recover anything that matters
        (results, requests) through their own resend logic, never by blocking here.
        """
        assert self._socket is not None
        try:
            self._socket.send(frame, zmq.NOBLOCK, copy=len(frame) < 65536)
        except zmq.Again:
            return False
        return True

    def post(self, frame: bytes) -> None:
        """Queue a frame for sending from any thread."""
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, LINGER_MS)
            push.connect(self._outbox_address)
            self._local.push = push
        push.send(frame)

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Frames received from the server; posted frames are sent on the way."""
        ready = dict(self._poller.poll(timeout_ms))
        if self._outbox in ready:
            while True:
                try:
                    self.send(self._outbox.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        received: list[bytes] = []
        if self._socket is not None and self._socket in ready:
            while True:
                try:
                    received.append(self._socket.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        return received

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=LINGER_MS)  # a last word (GOODBYE) still goes out
        self._outbox.close(linger=0)
