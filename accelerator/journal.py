"""The agent's record of which job ids it has started and finished, with their results.

It is what makes "a job id runs at most once per agent" hold across reconnects and restarts:
a job the server resends is answered from here instead of being run again, and a job that was
started by an earlier agent process but never finished is reported lost, not rerun.

The journal is an append-only file of msgpack records `[job id, entry, result or nil]`, with an
in-memory index of where each id's latest record starts.  A plain file rather than SQLite keeps
every agent process about 2 MB smaller; appends are flushed to the kernel at once (an agent crash
loses nothing, a machine crash may lose the last entries) and the file is compacted to the most
recent entries when it grows.
"""

from __future__ import annotations

import enum
import os
import threading
from pathlib import Path
from typing import Any

import msgpack

from accelerator.model import JobResult

KEEP_ENTRIES = 50_000


class Entry(str, enum.Enum):
    STARTED = "started"
    DONE = "done"


class Journal:
    def __init__(self, path: Path, *, keep: int = KEEP_ENTRIES) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._keep = keep
        self._lock = threading.Lock()
        self._index: dict[str, tuple[Entry, int]] = {}  # id -> (latest entry, offset of its record)
        self._records = 0
        self._load()
        self._file = path.open("ab")

    def _load(self) -> None:
        """Rebuild the index; a torn last record (the agent died mid-write) is cut off."""
        if not self._path.exists():
            return
        good_end = 0
        with self._path.open("rb") as handle:
            unpacker = msgpack.Unpacker(handle, raw=False)
            while True:
                offset = unpacker.tell()
                try:
                    record = unpacker.unpack()
                except msgpack.OutOfData:
                    break
                except (ValueError, msgpack.UnpackException):
                    break
                if not _valid(record):
                    break
                self._index.pop(record[0], None)  # re-insert: dict order is recency order
                self._index[record[0]] = (Entry(record[1]), offset)
                self._records += 1
                good_end = unpacker.tell()
        if good_end != self._path.stat().st_size:
            os.truncate(self._path, good_end)

    def lookup(self, job_id: str) -> tuple[Entry, JobResult | None] | None:
        with self._lock:
            found = self._index.get(job_id)
            if found is None:
                return None
            entry, offset = found
            if entry is not Entry.DONE:
                return entry, None
            with self._path.open("rb") as handle:
                handle.seek(offset)
                record = msgpack.Unpacker(handle, raw=False).unpack()
        return entry, JobResult.from_wire(record[2])

    def start(self, job_id: str) -> None:
        self._append(job_id, Entry.STARTED, None)

    def finish(self, job_id: str, result: JobResult) -> None:
        self._append(job_id, Entry.DONE, result.to_wire())

    def _append(self, job_id: str, entry: Entry, result: dict[str, Any] | None) -> None:
        packed = msgpack.packb([job_id, entry.value, result], use_bin_type=True)
        with self._lock:
            offset = self._file.tell()
            self._file.write(packed)
            self._file.flush()
            self._index.pop(job_id, None)
            self._index[job_id] = (entry, offset)
            self._records += 1
            if self._records > 2 * self._keep:
                self._compact()

    def _compact(self) -> None:
        """Rewrite the file with the latest record of the most recent `keep` job ids."""
        recent = list(self._index.items())[-self._keep:]
        temporary = self._path.with_suffix(".compact")
        index: dict[str, tuple[Entry, int]] = {}
        self._file.close()
        with self._path.open("rb") as source, temporary.open("wb") as target:
            for job_id, (entry, offset) in recent:
                source.seek(offset)
                record = msgpack.Unpacker(source, raw=False).unpack()
                index[job_id] = (entry, target.tell())
                target.write(msgpack.packb(record, use_bin_type=True))
        os.replace(temporary, self._path)
        self._index = index
        self._records = len(index)
        self._file = self._path.open("ab")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _valid(record: Any) -> bool:
    return (
        isinstance(record, list) and len(record) == 3 and isinstance(record[0], str)
        and record[1] in (Entry.STARTED.value, Entry.DONE.value)
        and (record[2] is None or isinstance(record[2], dict))
    )
