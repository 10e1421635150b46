"""Plain data shared by the server, the agent, the store and the clients: jobs, results, states.

These are the only shapes that travel inside `Message.data` for job traffic, so each has a
`to_wire`/`from_wire` pair and the store persists exactly the wire form.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class JobState(str, enum.Enum):
    """Where one job stands on one agent."""

    PENDING = "pending"  # accepted by the server, not yet sent (agent offline or queued)
    SENT = "sent"  # handed to the agent's socket, no result yet
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"  # an earlier job of the same parent failed on this agent
    LOST = "lost"  # the agent expired or restarted while the job was in flight

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.SENT)


# Starts the error of a LOST job its agent never began (it left before): safe to send again.
NOT_STARTED_PREFIX = "not started:"


class NodeState(str, enum.Enum):
    """Liveness of an agent as the server sees it."""

    ACTIVE = "active"
    EXPIRED = "expired"


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class JobSpec:
    """One job as submitted: a verb with controller-parsed arguments, aimed at some agents.

    `parent` groups jobs that run in order on each agent; a failure skips the rest of the
    parent on that agent only.  Jobs of ordinary parents share one serial queue per agent
    (arrival order); an `async_parent` gets its own worker and runs beside the others.
    `targets` empty means every active agent.
    """

    verb: str
    args: dict[str, Any]
    targets: list[str] = field(default_factory=list)
    parent: str = field(default_factory=new_id)
    id: str = field(default_factory=new_id)
    timeout: float | None = None
    blobs: list[str] = field(default_factory=list)  # sha256 of content the agent must fetch first
    label: str = ""  # a human name for listings (the original orchestration line)
    async_parent: bool = False  # run this parent beside others instead of in the agent's serial queue
    run_as: str = ""  # the user the job must run as (Ansible's become); empty: the agent's own user

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> JobSpec:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        spec = cls(**known)
        if not isinstance(spec.verb, str) or not isinstance(spec.args, dict):
            raise ValueError("job needs a string verb and a map of args")
        if not isinstance(spec.id, str) or not isinstance(spec.parent, str):
            raise ValueError("job id and parent must be strings")
        if not isinstance(spec.targets, list) or not all(isinstance(t, str) for t in spec.targets):
            raise ValueError("job targets must be a list of agent names")
        return spec


@dataclass(slots=True)
class JobResult:
    """What one agent reports for one job."""

    state: JobState
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    changed: bool = False
    started: float | None = None
    ended: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why the job failed when it is not the command's own doing

    @property
    def ok(self) -> bool:
        return self.state is JobState.SUCCESS

    def to_wire(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict: this runs for every result the server stores.
        return {
            "state": self.state.value, "rc": self.rc, "stdout": self.stdout, "stderr": self.stderr,
            "changed": self.changed, "started": self.started, "ended": self.ended,
            "data": self.data, "error": self.error,
        }

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> JobResult:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        known["state"] = JobState(known.get("state", JobState.FAILED.value))
        return cls(**known)

    @classmethod
    def failure(cls, error: str, *, rc: int | None = None, state: JobState = JobState.FAILED) -> JobResult:
        now = time.time()
        return cls(state=state, rc=rc, stderr=error, error=error, started=now, ended=now)
