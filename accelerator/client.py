"""The client side of the control socket: what the CLI and the Ansible plugins use.

A `Client` submits jobs (uploading the files they need first), waits for results as the server
pushes them, and asks for node and job listings.  One client per thread.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from accelerator import protocol
from accelerator.blobs import sha256_of
from accelerator.model import JobResult, JobSpec
from accelerator.paths import control_endpoint_for
from accelerator.protocol import Kind, Message
from accelerator.transport import DealerConnection


class ServerError(RuntimeError):
    """The server refused a request; the text is the server's reason."""


class ServerUnreachable(RuntimeError):
    pass


@dataclass(slots=True)
class Outcome:
    job: str
    agent: str
    result: JobResult


class Client:
    def __init__(self, home: Path | None = None, *, endpoint: str | None = None, timeout: float = 10.0) -> None:
        if endpoint is None:
            if home is None:
                raise ValueError("a client needs the server's home directory or control endpoint")
            endpoint = control_endpoint_for(home)
        self.endpoint = endpoint
        self.timeout = timeout
        self._connection = DealerConnection(endpoint)
        self._events: deque[Message] = deque()  # results pushed before the caller asked for them

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: Kind, **data: Any) -> dict[str, Any]:
        """Send one request and return the reply's data; events arriving meanwhile are kept."""
        msg = Message(kind, data)
        self._connection.send(msg.pack())
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerUnreachable(
                    f"no answer from the server at {self.endpoint} within {self.timeout} s; "
                    "is 'directord server' running?"
                )
            reply: Message | None = None
            # Read the whole batch: events that arrived right after the reply must be kept too.
            for frame in self._connection.poll(int(remaining * 1000) + 1):
                answer = protocol.unpack(frame)
                if answer.kind is Kind.EVENT:
                    self._events.append(answer)
                elif answer.id == msg.id:
                    reply = answer
            if reply is not None:
                if reply.kind is Kind.ERROR:
                    raise ServerError(str(reply.data.get("reason")))
                return reply.data

    def upload(self, files: dict[str, Path]) -> None:
        """Send the files (sha256 -> path) the server does not have yet, in chunks."""
        if not files:
            return
        missing = self.request(Kind.BLOB_HAS, shas=list(files))["missing"]
        for sha in missing:
            path = files[sha]
            if sha256_of(path) != sha:
                raise ValueError(f"{path} changed while it was being submitted")
            size = path.stat().st_size
            with path.open("rb") as handle:
                offset = 0
                while True:
                    data = handle.read(protocol.CHUNK_SIZE)
                    last = offset + len(data) >= size
                    self.request(Kind.BLOB_PUT, sha=sha, offset=offset, data=data, last=last)
                    offset += len(data)
                    if last:
                        break

    def submit(self, specs: Iterable[JobSpec], *, watch: bool = True) -> list[dict[str, Any]]:
        """Submit jobs all-or-nothing; with watch, their results are pushed to this client."""
        return self.request(Kind.SUBMIT, jobs=[spec.to_wire() for spec in specs], watch=watch)["jobs"]

    def watch(self, job_ids: list[str]) -> None:
        self.request(Kind.WATCH, jobs=job_ids)

    def results(self, expected: dict[str, set[str]], timeout: float | None = None) -> Iterator[Outcome]:
        """Yield each (job, agent) result as it arrives until all `expected` are in.

        `expected` maps job id -> agents; on timeout, raise TimeoutError naming what is missing.
        """
        waiting = {job: set(agents) for job, agents in expected.items() if agents}
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting:
            while self._events:
                event = self._events.popleft()
                agent = str(event.data.get("agent"))
                if event.job in waiting and agent in waiting[event.job]:
                    waiting[event.job].discard(agent)
                    if not waiting[event.job]:
                        del waiting[event.job]
                    yield Outcome(event.job, agent, JobResult.from_wire(event.data["result"]))
            if not waiting:
                return
            wait_ms = 1000
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = ", ".join(f"{job[:8]}@{'/'.join(sorted(a))}" for job, a in waiting.items())
                    raise TimeoutError(f"no result within {timeout} s for {missing}")
                wait_ms = min(wait_ms, int(left * 1000) + 1)
            for frame in self._connection.poll(wait_ms):
                event = protocol.unpack(frame)
                if event.kind is Kind.EVENT:
                    self._events.append(event)

    def run(self, specs: list[JobSpec], uploads: dict[str, Path] | None = None,
            timeout: float | None = None) -> list[Outcome]:
        """Upload, submit and wait: every outcome of every job, in arrival order."""
        self.upload(uploads or {})
        accepted = self.submit(specs)
        expected = {job["id"]: set(job["targets"]) for job in accepted}
        return list(self.results(expected, timeout))
