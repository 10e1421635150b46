"""The agent's record of which job ids it has started and finished, with their results.

It is what makes "a job id runs at most once per agent" hold across reconnects and restarts:
a job the server resends is answered from here instead of being run again, and a job that was
started by an earlier agent process but never finished is reported lost, not rerun.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from pathlib import Path

import msgpack

from accelerator.model import JobResult

KEEP_ENTRIES = 50_000


class Entry(str, enum.Enum):
    STARTED = "started"
    DONE = "done"


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A crash of the whole machine may lose the last entries; a crash of the agent does not.
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT, result BLOB, at REAL)"
        )
        self._lock = threading.Lock()
        self._writes = 0
        self._prune()

    def lookup(self, job_id: str) -> tuple[Entry, JobResult | None] | None:
        with self._lock:
            row = self._db.execute("SELECT state, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        result = JobResult.from_wire(msgpack.unpackb(row[1])) if row[1] is not None else None
        return Entry(row[0]), result

    def start(self, job_id: str) -> None:
        self._write("INSERT OR REPLACE INTO jobs VALUES (?, ?, NULL, ?)", (job_id, Entry.STARTED.value, time.time()))

    def finish(self, job_id: str, result: JobResult) -> None:
        packed = msgpack.packb(result.to_wire(), use_bin_type=True)
        self._write("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)", (job_id, Entry.DONE.value, packed, time.time()))

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, params)
            self._writes += 1
            if self._writes % 5000 == 0:
                self._prune_locked()

    def _prune(self) -> None:
        with self._lock:
            self._prune_locked()

    def _prune_locked(self) -> None:
        self._db.execute(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs ORDER BY at DESC LIMIT -1 OFFSET ?)",
            (KEEP_ENTRIES,),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
