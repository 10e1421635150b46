"""The job store interface.  It keeps jobs, per-agent results, node records and checkpoints.

The store knows no scheduling: the server decides what to send and when, and records here what
happened.  Everything stored is plain data in wire form (msgpack-able maps), never pickles.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from accelerator.model import JobResult, JobSpec, JobState


@dataclass(slots=True)
class JobRecord:
    """A submitted job and what each targeted agent reported for it."""

    spec: JobSpec
    submitted: float
    results: dict[str, JobResult] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return bool(self.results) and all(r.state.finished for r in self.results.values())

    def summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for result in self.results.values():
            states[result.state.value] = states.get(result.state.value, 0) + 1
        return {
            "id": self.spec.id,
            "parent": self.spec.parent,
            "verb": self.spec.verb,
            "label": self.spec.label,
            "submitted": self.submitted,
            "targets": len(self.results),
            "states": states,
        }

    def to_wire(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_wire(),
            "submitted": self.submitted,
            "results": {name: result.to_wire() for name, result in self.results.items()},
        }

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> JobRecord:
        return cls(
            spec=JobSpec.from_wire(raw["spec"]),
            submitted=raw["submitted"],
            results={name: JobResult.from_wire(r) for name, r in raw.get("results", {}).items()},
        )


class Store(abc.ABC):
    """Persistence for the server; implementations: memory, sqlite, redis."""

    @abc.abstractmethod
    def add_job(self, record: JobRecord) -> None:
        """Record a new job with a PENDING result for each target."""

    @abc.abstractmethod
    def set_result(self, job_id: str, agent: str, result: JobResult) -> None:
        """Record (or replace) one agent's result or state for a job."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def jobs(self) -> list[JobRecord]:
        """Every stored job, oldest first."""

    @abc.abstractmethod
    def purge_jobs(self, older_than: float | None = None) -> int:
        """Delete finished jobs submitted before `older_than` (all finished jobs when None)."""

    @abc.abstractmethod
    def put_node(self, name: str, info: dict[str, Any]) -> None:
        """Record an agent's last known facts (heartbeat time, expiry, version, host...)."""

    @abc.abstractmethod
    def nodes(self) -> dict[str, dict[str, Any]]: ...

    @abc.abstractmethod
    def delete_node(self, name: str) -> None: ...

    @abc.abstractmethod
    def put_checkpoint(self, key: str, value: dict[str, Any]) -> None:
        """Small durable facts for other components (e.g. the graph runner's finished nodes)."""

    @abc.abstractmethod
    def get_checkpoint(self, key: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def delete_checkpoints(self, prefix: str) -> int: ...

    def flush(self) -> None:
        """Make buffered writes durable; a no-op for stores that write through."""

    def close(self) -> None:
        self.flush()

    def unfinished(self) -> list[tuple[JobRecord, list[str]]]:
        """Jobs with agents still PENDING or SENT, for a restarted server to resume."""
        pending = []
        for record in self.jobs():
            waiting = [a for a, r in record.results.items() if r.state in (JobState.PENDING, JobState.SENT)]
            if waiting:
                pending.append((record, waiting))
        return pending
