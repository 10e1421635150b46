"""The one wire message of Directord Accelerator, packed and validated in one place.

Every frame that crosses a socket (agent <-> server, client <-> server) is a single msgpack map
with a protocol version, a kind, a message id and a payload.  Nothing is ever pickled: a peer
we do not trust must not be able to make us run code by sending bytes.  Validation happens here,
on receipt, so the server and the agent only ever see well-formed `Message` objects; anything
else raises `ProtocolError` naming what was wrong, and the caller counts, logs and drops it.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

# A frame larger than this is refused before it is unpacked.  COPY chunks and module payload
# chunks are sized well below it (see CHUNK_SIZE), so only a broken or hostile peer exceeds it.
MAX_FRAME_BYTES = 8 * 1024 * 1024
CHUNK_SIZE = 1024 * 1024


class Kind(str, enum.Enum):
    """What a message means; one handler per kind on each side."""

    # agent -> server
    HELLO = "hello"
    HEARTBEAT = "heartbeat"
    RESULT = "result"
    QUERY_VALUE = "query_value"
    BLOB_REQUEST = "blob_request"
    GOODBYE = "goodbye"  # the agent is leaving (idle timeout): jobs sent to it now were never started
    # server -> agent
    WELCOME = "welcome"
    JOB = "job"
    BLOB_CHUNK = "blob_chunk"
    QUERY_MAP = "query_map"
    # client -> server (control socket)
    SUBMIT = "submit"
    BLOB_PUT = "blob_put"
    BLOB_HAS = "blob_has"
    NODES = "nodes"
    JOBS = "jobs"
    JOB_INFO = "job_info"
    PURGE = "purge"
    RELOAD_KEYS = "reload_keys"
    WATCH = "watch"
    # server -> client
    REPLY = "reply"
    EVENT = "event"  # a result pushed to a client that watches the job
    # either way
    ERROR = "error"


class ProtocolError(ValueError):
    """A frame that is not a valid message; the text says what is wrong with it."""


@dataclass(slots=True)
class Message:
    """One message on the wire.

    `job` and `parent` are set on job-related kinds so that routing code never has to dig
    into `data`; `data` holds the kind-specific payload (documented in docs/formats.md).
    """

    kind: Kind
    data: dict[str, Any] = field(default_factory=dict)
    job: str | None = None
    parent: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    version: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        return pack_map(
            {
                "v": self.version,
                "kind": self.kind.value,
                "id": self.id,
                "job": self.job,
                "parent": self.parent,
                "data": self.data,
            }
        )

    def reply(self, kind: Kind = Kind.REPLY, **data: Any) -> Message:
        """A response correlated to this message (same id, so the asker can match it)."""
        return Message(kind=kind, data=data, job=self.job, parent=self.parent, id=self.id)


def pack_map(value: dict[str, Any]) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(frame: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Decode and validate one frame; raise ProtocolError with the reason if it is not a message."""
    if len(frame) > max_bytes:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {max_bytes}-byte limit")
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage input
        raise ProtocolError(f"not msgpack: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"expected a map, got {type(raw).__name__}")
    version = raw.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported (this side speaks {PROTOCOL_VERSION})")
    try:
        kind = Kind(raw.get("kind"))
    except ValueError:
        raise ProtocolError(f"unknown message kind {raw.get('kind')!r}") from None
    msg_id = raw.get("id")
    if not isinstance(msg_id, str) or not msg_id:
        raise ProtocolError("message id missing or not a string")
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise ProtocolError(f"data must be a map, got {type(data).__name__}")
    job, parent = raw.get("job"), raw.get("parent")
    for name, value in (("job", job), ("parent", parent)):
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"{name} must be a string or nil")
    return Message(kind=kind, data=data, job=job, parent=parent, id=msg_id, version=version)


def require(msg: Message, name: str, kind: type | tuple[type, ...]) -> Any:
    """Fetch a mandatory field of `msg.data`, raising ProtocolError naming it if absent or mistyped."""
    value = msg.data.get(name)
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(f"{msg.kind.value}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value
