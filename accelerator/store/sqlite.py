"""A store in one SQLite file, so jobs and results survive a server restart.

Rows hold the wire form (`to_wire`) packed with msgpack, never pickles.  The server records a
result for every agent of every job, so committing each write would make it wait on the disk
thousands of times a second; writes are instead collected in one open transaction and
committed in batches (see `_writing`).  Reads use the same connection, so they see
buffered rows before they are committed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any, Iterator

import msgpack

from accelerator.model import JobResult
from accelerator.protocol import pack_map
from accelerator.store.base import JobRecord, Store

BATCH_WRITES = 1000  # commit once this many writes are buffered...
BATCH_SECONDS = 0.2  # ...or once a write comes this long after the last commit

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    submitted REAL NOT NULL,
    spec BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs (submitted);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    result BLOB NOT NULL,
    PRIMARY KEY (job_id, agent)
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    info BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""

# One row per (job, agent); a job with no results yet still yields one row with NULL agent.
# Ordering by rowid keeps jobs of equal `submitted` and each job's agents in insertion order.
SELECT_RECORDS = """
SELECT jobs.id, jobs.submitted, jobs.spec, results.agent, results.result
FROM jobs LEFT JOIN results ON results.job_id = jobs.id
{where}
ORDER BY jobs.submitted, jobs.rowid, results.rowid
"""

# A result for an unknown (e.g. already purged) job is dropped, as MemoryStore does, rather
# than left orphaned.  The upsert keeps the row's rowid, hence the agent's position.
UPSERT_RESULT = """
INSERT INTO results (job_id, agent, result)
SELECT :job_id, :agent, :result WHERE EXISTS (SELECT 1 FROM jobs WHERE id = :job_id)
ON CONFLICT (job_id, agent) DO UPDATE SET result = excluded.result
"""


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


class SqliteStore(Store):
    def __init__(self, path: str) -> None:
        try:
            # Autocommit mode: transactions are begun and committed here, explicitly, so the
            # batching does not depend on the sqlite3 module's implicit BEGIN rules.
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL skips the fsync per commit; a crash of the process loses
            # nothing committed, a power cut may lose the last commits.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"cannot open sqlite store {path!r}: {exc}") from exc
        self._buffered = 0
        self._last_commit = time.monotonic()

    # -- batching ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One logical write: joins the open batch, which may then be committed whole.

        Callers pack their values before entering, so a value msgpack refuses fails before
        any statement of the write has run.
        """
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")
        yield self._conn
        self._buffered += 1
        if self._buffered >= BATCH_WRITES or time.monotonic() - self._last_commit >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Commit the open batch.  Batches close only on a later write, so call this when idle."""
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._buffered = 0
        self._last_commit = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._conn.close()

    # -- jobs -------------------------------------------------------------------------------

    def add_job(self, record: JobRecord) -> None:
        """Insert or replace the job; replacing drops its old results, as MemoryStore does."""
        spec = record.spec
        job = (spec.id, spec.parent, record.submitted, pack_map(spec.to_wire()))
        results = [(spec.id, agent, pack_map(r.to_wire())) for agent, r in record.results.items()]
        with self._writing() as conn:
            conn.execute("DELETE FROM results WHERE job_id = ?", (spec.id,))
            conn.execute("INSERT OR REPLACE INTO jobs (id, parent, submitted, spec) VALUES (?, ?, ?, ?)", job)
            conn.executemany("INSERT INTO results (job_id, agent, result) VALUES (?, ?, ?)", results)

    def set_result(self, job_id: str, agent: str, result: JobResult) -> None:
        row = {"job_id": job_id, "agent": agent, "result": pack_map(result.to_wire())}
        with self._writing() as conn:
            conn.execute(UPSERT_RESULT, row)

    def get_job(self, job_id: str) -> JobRecord | None:
        records = self._records("WHERE jobs.id = ?", (job_id,))
        return records[0] if records else None

    def jobs(self) -> list[JobRecord]:
        """Every job ordered by submission time (then insertion order for equal times)."""
        return self._records("", ())

    def purge_jobs(self, older_than: float | None = None) -> int:
        if older_than is None:
            candidates = self.jobs()
        else:
            candidates = self._records("WHERE jobs.submitted < ?", (older_than,))
        doomed = [(record.spec.id,) for record in candidates if record.finished]
        if doomed:
            with self._writing() as conn:
                conn.executemany("DELETE FROM results WHERE job_id = ?", doomed)
                conn.executemany("DELETE FROM jobs WHERE id = ?", doomed)
        return len(doomed)

    def _records(self, where: str, params: tuple[Any, ...]) -> list[JobRecord]:
        """Rebuild records from the joined rows (one per result), keeping the query's order."""
        wires: dict[str, dict[str, Any]] = {}
        rows = self._conn.execute(SELECT_RECORDS.format(where=where), params)
        for job_id, submitted, spec, agent, result in rows:
            wire = wires.get(job_id)
            if wire is None:
                wire = wires[job_id] = {"spec": _unpack(spec), "submitted": submitted, "results": {}}
            if agent is not None:
                wire["results"][agent] = _unpack(result)
        return [JobRecord.from_wire(wire) for wire in wires.values()]

    # -- nodes and checkpoints --------------------------------------------------------------

    def put_node(self, name: str, info: dict[str, Any]) -> None:
        row = (name, pack_map(info))
        with self._writing() as conn:
            conn.execute("INSERT OR REPLACE INTO nodes (name, info) VALUES (?, ?)", row)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {name: _unpack(info) for name, info in self._conn.execute("SELECT name, info FROM nodes")}

    def delete_node(self, name: str) -> None:
        with self._writing() as conn:
            conn.execute("DELETE FROM nodes WHERE name = ?", (name,))

    def put_checkpoint(self, key: str, value: dict[str, Any]) -> None:
        row = (key, pack_map(value))
        with self._writing() as conn:
            conn.execute("INSERT OR REPLACE INTO checkpoints (key, value) VALUES (?, ?)", row)

    def get_checkpoint(self, key: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT value FROM checkpoints WHERE key = ?", (key,)).fetchone()
        return _unpack(row[0]) if row is not None else None

    def delete_checkpoints(self, prefix: str) -> int:
        # substr rather than LIKE: a prefix may itself contain '%' or '_'.
        with self._writing() as conn:
            cursor = conn.execute("DELETE FROM checkpoints WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
        return cursor.rowcount
