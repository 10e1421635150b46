"""The default store: plain dicts in the server process; nothing survives a restart."""

from __future__ import annotations

from typing import Any

from accelerator.model import JobResult
from accelerator.store.base import JobRecord, Store


class MemoryStore(Store):
    def __init__(self) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._checkpoints: dict[str, dict[str, Any]] = {}

    def add_job(self, record: JobRecord) -> None:
        self._jobs[record.spec.id] = record

    def set_result(self, job_id: str, agent: str, result: JobResult) -> None:
        record = self._jobs.get(job_id)
        if record is not None:
            record.results[agent] = result

    def get_job(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[JobRecord]:
        return list(self._jobs.values())

    def purge_jobs(self, older_than: float | None = None) -> int:
        doomed = [
            job_id
            for job_id, record in self._jobs.items()
            if record.finished and (older_than is None or record.submitted < older_than)
        ]
        for job_id in doomed:
            del self._jobs[job_id]
        return len(doomed)

    def put_node(self, name: str, info: dict[str, Any]) -> None:
        self._nodes[name] = dict(info)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {name: dict(info) for name, info in self._nodes.items()}

    def delete_node(self, name: str) -> None:
        self._nodes.pop(name, None)

    def put_checkpoint(self, key: str, value: dict[str, Any]) -> None:
        self._checkpoints[key] = dict(value)

    def get_checkpoint(self, key: str) -> dict[str, Any] | None:
        value = self._checkpoints.get(key)
        return dict(value) if value is not None else None

    def delete_checkpoints(self, prefix: str) -> int:
        doomed = [key for key in self._checkpoints if key.startswith(prefix)]
        for key in doomed:
            del self._checkpoints[key]
        return len(doomed)
