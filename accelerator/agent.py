"""The agent: a persistent process on each host that runs jobs the server sends it.

The main thread owns the socket: it says hello, heartbeats, reconnects when the server goes
quiet, and routes incoming messages.  Jobs run in worker threads: one serial queue for ordinary
parents (so jobs run in the order they arrived) and one thread per async parent.  Workers talk
back through the connection's thread-safe outbox.  The journal answers resent job ids, so a job
runs at most once here whatever the network does.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from accelerator import __version__, components, protocol
from accelerator.blobs import BlobDir, BlobError, check_sha
from accelerator.components.base import ComponentError
from accelerator.journal import Entry, Journal
from accelerator.model import JobResult, JobSpec, JobState
from accelerator.protocol import Kind, Message, ProtocolError, require
from accelerator.transport import DealerConnection

log = logging.getLogger("directord.agent")

TRANSFER_STALL_SECONDS = 120.0
MAX_REMEMBERED_FAILURES = 10_000


PIDFILE = "agent.pid"  # in the agent's home, written by accelerator.bootstrap's start-up script


@dataclass(slots=True)
class AgentConfig:
    server: str
    name: str
    home: Path
    server_public: str | None = None  # pinned server key; None only with insecure
    keypair: tuple[str, str] | None = None
    insecure: bool = False
    allowed_roots: tuple[Path, ...] = (Path("/"),)
    heartbeat_interval: float = 1.0
    idle_timeout: float | None = None  # exit after this long without work (bootstrapped agents)
    warm_zygote: bool = False  # start the module zygote at once (agents that serve Ansible runs)


@dataclass(slots=True)
class Transfer:
    """A blob being pulled from the server chunk by chunk."""

    sha: str
    next_offset: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    last_progress: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class QueryWait:
    key: str
    value: Any
    done: threading.Event = field(default_factory=threading.Event)
    values: dict[str, Any] = field(default_factory=dict)


class JobContext:
    """The ExecContext a component sees while one job runs on this agent."""

    def __init__(self, agent: Agent, spec: JobSpec) -> None:
        self._agent = agent
        self.agent_name = agent.config.name
        self.job_id = spec.id
        self.variables = agent.variables
        self.environment = agent.environment
        self.allowed_roots = agent.config.allowed_roots
        self.state_dir = agent.config.home

    def fetch_blob(self, sha256: str) -> Path:
        return self._agent.fetch_blob(sha256)

    def exchange_query(self, key: str, value: Any, timeout: float) -> dict[str, Any]:
        return self._agent.exchange_query(self.job_id, key, value, timeout)

    def render(self, text: str) -> str:
        return self._agent.render(text)

    def run_module(self, request: dict[str, Any], timeout: float | None, raw: bool = False) -> JobResult:
        return self._agent.run_module(request, timeout, raw)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if config.insecure:
            log.warning("INSECURE: connecting without Curve; any server on %s can send jobs", config.server)
        elif config.server_public is None or config.keypair is None:
            raise ValueError("a secure agent needs the server's public key and its own key pair")
        self.connection = DealerConnection(
            config.server,
            server_public=None if config.insecure else config.server_public,
            keypair=None if config.insecure else config.keypair,
        )
        self.journal = Journal(config.home / "journal")
        self.blobs = BlobDir(config.home / "blobs")
        self.variables: dict[str, Any] = {}
        self.environment: dict[str, str] = {}
        self.session = uuid.uuid4().hex
        self._accepted: set[str] = set()
        self._failed_parents: OrderedDict[str, None] = OrderedDict()
        self._serial: queue.Queue[JobSpec] = queue.Queue()
        self._async: dict[str, queue.Queue[JobSpec]] = {}
        self._lock = threading.Lock()
        self._transfers: dict[str, Transfer] = {}
        self._queries: dict[str, QueryWait] = {}
        self._busy = 0
        self._last_work = time.monotonic()
        self._last_heard = time.monotonic()
        self._server_expiry = 10.0  # replaced by the server's own figure in WELCOME
        self._last_error = ""
        self._running = False
        self._zygote: Any = None
        self._jinja: Any = None
        self._handlers: dict[Kind, Callable[[Message], None]] = {
            Kind.WELCOME: self.on_welcome,
            Kind.HEARTBEAT: lambda msg: None,
            Kind.JOB: self.on_job,
            Kind.BLOB_CHUNK: self.on_blob_chunk,
            Kind.QUERY_MAP: self.on_query_map,
            Kind.ERROR: self.on_error,
        }
        threading.Thread(target=self._work_serial, name="serial", daemon=True).start()

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> None:
        self._running = True
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
        interval = self.config.heartbeat_interval
        self.hello()
        if self.config.warm_zygote:
            threading.Thread(target=self._zygote_instance, name="zygote-start", daemon=True).start()
        next_beat = time.monotonic() + interval
        try:
            while self._running:
                wait_ms = max(0, int((next_beat - time.monotonic()) * 1000))
                for frame in self.connection.poll(wait_ms):
                    self.dispatch(frame)
                now = time.monotonic()
                if now >= next_beat:
                    self._beat(now)
                    next_beat = now + interval
        finally:
            self.connection.close()
            if self._zygote is not None:
                self._zygote.close()
            self.journal.close()

    def stop(self) -> None:
        self._running = False

    def _beat(self, now: float) -> None:
        """Heartbeat; reconnect when the server has been silent too long; exit when idle."""
        silent_for = now - self._last_heard
        if silent_for > self._server_expiry:
            log.warning("no word from the server for %.1f s; reconnecting", silent_for)
            self.connection.connect()
            self._last_heard = now
            self.hello()
        else:
            self.connection.send(Message(Kind.HEARTBEAT).pack())
        self._resume_transfers()
        idle = self.config.idle_timeout
        if idle is not None and self._busy == 0 and now - self._last_work > idle:
            log.info("idle for %.0f s; exiting", idle)
            # First the pidfile: a bootstrap that finds this process still alive must start a new
            # agent, not trust one that is leaving.  Then the server: without a word it would think
            # this agent alive until its expiry, and hand it jobs meanwhile; told, it ends them at
            # once as never started, so they can be resent.
            self._release_pidfile()
            self.connection.send(Message(Kind.GOODBYE, {"reason": f"idle for {idle:.0f} s"}).pack())
            self.stop()

    def _release_pidfile(self) -> None:
        """Remove the pidfile the bootstrap wrote for this process (not a newer agent's)."""
        path = self.config.home / PIDFILE
        try:
            if int(path.read_text().split()[0]) == os.getpid():
                path.unlink()
        except (OSError, ValueError, IndexError):
            pass

    def hello(self) -> None:
        self.connection.send(Message(Kind.HELLO, {
            "name": self.config.name,
            "session": self.session,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
        }).pack())

    def dispatch(self, frame: bytes) -> None:
        self._last_heard = time.monotonic()
        try:
            msg = protocol.unpack(frame)
            handler = self._handlers.get(msg.kind)
            if handler is None:
                raise ProtocolError(f"{msg.kind.value} is not a message a server sends to agents")
            handler(msg)
        except (ProtocolError, BlobError, ValueError, KeyError, TypeError) as exc:
            log.warning("dropped a message from the server: %s", exc)

    def on_welcome(self, msg: Message) -> None:
        self._last_error = ""
        expiry = msg.data.get("expiry")
        if isinstance(expiry, (int, float)) and expiry > 0:
            self._server_expiry = float(expiry)
        log.info("connected to %s as %s", self.config.server, msg.data.get("name"))
        with self._lock:
            pending = list(self._queries.items())
        for job_id, wait in pending:
            if not wait.done.is_set():
                self._send_query_value(job_id, wait)

    def on_error(self, msg: Message) -> None:
        reason = msg.data.get("reason", "")
        if reason == "hello-required":
            self.hello()
        elif reason != self._last_error:
            # A refused agent hears the same reason every heartbeat; say it once until it changes.
            log.warning("server error: %s", reason)
        self._last_error = reason

    # -- jobs -----------------------------------------------------------------------------

    def on_job(self, msg: Message) -> None:
        spec = JobSpec.from_wire(require(msg, "spec", dict))
        if spec.id in self._accepted:
            return  # queued or running in this process; its result will come
        seen = self.journal.lookup(spec.id)
        if seen is not None:
            entry, result = seen
            if entry is Entry.DONE and result is not None:
                self._post_result(spec.id, result)
            else:
                self._post_result(spec.id, JobResult.failure(
                    f"the agent restarted while job {spec.id} was running; not run again",
                    state=JobState.LOST))
            return
        self._accepted.add(spec.id)
        self._last_work = time.monotonic()
        if not spec.async_parent:
            self._serial.put(spec)
            return
        with self._lock:
            parent_queue = self._async.get(spec.parent)
            if parent_queue is None:
                parent_queue = self._async[spec.parent] = queue.Queue()
                threading.Thread(target=self._work_async, args=(spec.parent, parent_queue),
                                 name=f"parent-{spec.parent[:8]}", daemon=True).start()
            parent_queue.put(spec)

    def _work_serial(self) -> None:
        while True:
            self._execute(self._serial.get())

    def _work_async(self, parent: str, jobs: queue.Queue[JobSpec]) -> None:
        """Run one async parent's jobs in order; end the thread once its queue stays empty."""
        while True:
            try:
                spec = jobs.get(timeout=30)
            except queue.Empty:
                with self._lock:
                    if jobs.empty():
                        del self._async[parent]
                        return
                continue
            self._execute(spec)

    def _execute(self, spec: JobSpec) -> None:
        with self._lock:
            self._busy += 1
        try:
            if spec.parent in self._failed_parents:
                result = JobResult(state=JobState.SKIPPED, started=time.time(), ended=time.time(),
                                   error="an earlier job of the same parent failed on this agent")
            else:
                self.journal.start(spec.id)
                result = self._run_component(spec)
                if result.state is not JobState.SUCCESS:
                    self._remember_failure(spec.parent)
            self.journal.finish(spec.id, result)
            self._post_result(spec.id, result)
        finally:
            # From here on a resend of this id is answered from the journal.
            self._accepted.discard(spec.id)
            with self._lock:
                self._busy -= 1
            self._last_work = time.monotonic()

    def _run_component(self, spec: JobSpec) -> JobResult:
        try:
            component = components.get(spec.verb)
            args = spec.args
            if spec.run_as and spec.run_as not in _own_user_names():
                if spec.verb != "RUN":
                    return JobResult.failure(f"{spec.verb}: the job must run as {spec.run_as!r} (become), and this "
                                             f"agent runs as {_own_user_names()[0]!r}; only RUN can switch user (sudo)")
                args = {**args, "become_user": spec.run_as}
            return component.execute(args, JobContext(self, spec))
        except ComponentError as exc:
            return JobResult.failure(str(exc))
        except Exception as exc:  # a verb bug must fail the job, not the agent
            log.exception("job %s (%s) crashed", spec.id, spec.verb)
            return JobResult.failure(f"{spec.verb} crashed: {exc.__class__.__name__}: {exc}\n"
                                     + traceback.format_exc(limit=5))

    def _remember_failure(self, parent: str) -> None:
        with self._lock:
            self._failed_parents[parent] = None
            while len(self._failed_parents) > MAX_REMEMBERED_FAILURES:
                self._failed_parents.popitem(last=False)

    def _post_result(self, job_id: str, result: JobResult) -> None:
        self.connection.post(Message(Kind.RESULT, {"result": result.to_wire()}, job=job_id).pack())

    # -- blobs ----------------------------------------------------------------------------

    def fetch_blob(self, sha: str) -> Path:
        """A verified local copy of an uploaded blob, pulled from the server if not cached."""
        check_sha(sha)
        if self.blobs.has(sha):
            return self.blobs.path(sha)
        with self._lock:
            existing = self._transfers.get(sha)
            transfer = existing or self._transfers.setdefault(sha, Transfer(sha))
        if existing is None:
            self._request_chunk(transfer)
        while not transfer.done.wait(1.0):
            if time.monotonic() - transfer.last_progress > TRANSFER_STALL_SECONDS:
                transfer.error = f"blob {sha[:12]}: no data from the server for {TRANSFER_STALL_SECONDS} s"
                break
        with self._lock:
            self._transfers.pop(sha, None)
        if transfer.error:
            raise ComponentError(transfer.error)
        return self.blobs.path(sha)

    def _request_chunk(self, transfer: Transfer) -> None:
        self.connection.post(Message(Kind.BLOB_REQUEST, {
            "sha": transfer.sha, "offset": transfer.next_offset, "size": protocol.CHUNK_SIZE,
        }).pack())

    def _resume_transfers(self) -> None:
        """Ask again for transfers that stalled (a request or chunk lost in a reconnect)."""
        with self._lock:
            stalled = [t for t in self._transfers.values() if time.monotonic() - t.last_progress > 5.0]
        for transfer in stalled:
            self._request_chunk(transfer)

    def on_blob_chunk(self, msg: Message) -> None:
        sha = check_sha(require(msg, "sha", str))
        transfer = self._transfers.get(sha)
        if transfer is None:
            return
        if msg.data.get("error"):
            transfer.error = str(msg.data["error"])
            transfer.done.set()
            return
        offset, total = require(msg, "offset", int), require(msg, "total", int)
        data = require(msg, "data", bytes)
        if offset != transfer.next_offset:
            return  # a duplicate from a repeated request
        self.blobs.write_chunk(sha, offset, data)
        transfer.next_offset = offset + len(data)
        transfer.last_progress = time.monotonic()
        if transfer.next_offset >= total:
            try:
                self.blobs.commit(sha)
            except BlobError as exc:
                transfer.error = str(exc)
            transfer.done.set()
        elif not data:
            transfer.error = f"blob {sha[:12]}: the server sent an empty chunk at {offset} of {total}"
            transfer.done.set()
        else:
            self.connection.send(Message(Kind.BLOB_REQUEST, {
                "sha": sha, "offset": transfer.next_offset, "size": protocol.CHUNK_SIZE,
            }).pack())

    # -- QUERY ----------------------------------------------------------------------------

    def exchange_query(self, job_id: str, key: str, value: Any, timeout: float) -> dict[str, Any]:
        wait = QueryWait(key, value)
        with self._lock:
            self._queries[job_id] = wait
        try:
            self._send_query_value(job_id, wait)
            if not wait.done.wait(timeout):
                raise TimeoutError(f"QUERY {key}")
            return wait.values
        finally:
            with self._lock:
                self._queries.pop(job_id, None)

    def _send_query_value(self, job_id: str, wait: QueryWait) -> None:
        self.connection.post(Message(Kind.QUERY_VALUE, {"key": wait.key, "value": wait.value}, job=job_id).pack())

    def on_query_map(self, msg: Message) -> None:
        wait = self._queries.get(msg.job or "")
        if wait is not None:
            wait.values = dict(require(msg, "values", dict))
            wait.done.set()

    # -- helpers for components ----------------------------------------------------------

    def render(self, text: str) -> str:
        """Expand {{ variables }} with Jinja2, loaded only when a job first needs it."""
        if "{{" not in text and "{%" not in text:
            return text
        import jinja2  # cached by Python after the first job that templates

        if self._jinja is None:
            self._jinja = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            return self._jinja.from_string(text).render(**self.variables)
        except jinja2.TemplateError as exc:
            raise ComponentError(f"template error: {exc}") from None

    def run_module(self, request: dict[str, Any], timeout: float | None, raw: bool = False) -> JobResult:
        from accelerator import zygote

        return zygote.run_in_zygote(self._zygote_instance(), request, timeout, raw)

    def _zygote_instance(self) -> Any:
        """The zygote, started on first use (or at start with warm_zygote, so the first module need not wait)."""
        from accelerator import zygote

        with self._lock:
            if self._zygote is None:
                self._zygote = zygote.Zygote(self.config.home / "zygote")
                self._zygote.start()
            return self._zygote


def _own_user_names() -> tuple[str, ...]:
    """This process's user, by name and by id (a job may name either)."""
    import pwd

    uid = os.geteuid()
    try:
        return (pwd.getpwuid(uid).pw_name, str(uid))
    except KeyError:
        return (str(uid),)
