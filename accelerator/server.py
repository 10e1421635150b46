"""The server: accepts agents, dispatches jobs, records results, answers clients.

One thread runs `serve()`: it polls both sockets, hands each message to the handler for its
kind, and every heartbeat interval expires silent agents.  All state lives in this thread, so
nothing here needs a lock.  Bad input from any peer is counted, logged once with its origin
and answered with an error where there is someone to answer; it never stops the loop.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from accelerator import components, keys, protocol
from accelerator.blobs import BlobDir, BlobError, check_sha
from accelerator.paths import control_endpoint_for
from accelerator.model import NOT_STARTED_PREFIX, JobResult, JobSpec, JobState, NodeState
from accelerator.protocol import Kind, Message, ProtocolError, require
from accelerator.store import JobRecord, Store, open_store
from accelerator.transport import Channel, Incoming, ServerTransport

log = logging.getLogger("directord.server")

MAX_DRAIN_ROUNDS = 1000  # each round reads up to 1,000 frames per socket
_HEARTBEAT = Message(Kind.HEARTBEAT, id="heartbeat").pack()  # every heartbeat answer is the same frame


@dataclass(slots=True)
class ServerConfig:
    home: Path
    agent_endpoint: str = "tcp://127.0.0.1:5555"
    control_endpoint: str | None = None
    store_url: str = "memory"
    insecure: bool = False
    heartbeat_interval: float = 1.0
    expiry: float = 10.0
    # Exit after this long without client requests and with no job outstanding: the server an
    # Ansible run starts on demand must not outlive its usefulness.
    idle_timeout: float | None = None

    @property
    def control(self) -> str:
        return self.control_endpoint or control_endpoint_for(self.home)


@dataclass(slots=True)
class Session:
    """A connected agent, known by the name its enrolled key maps to."""

    name: str
    peer: bytes
    session: str
    key: str | None
    last_seen: float
    info: dict[str, Any]
    state: NodeState = NodeState.ACTIVE
    inflight: dict[str, JobSpec] = field(default_factory=dict)  # job id -> spec, in send order


@dataclass(slots=True)
class QueryBarrier:
    """Values gathered for one QUERY job; complete when every target answered or finished."""

    key: str
    targets: set[str]
    values: dict[str, Any] = field(default_factory=dict)
    sent: bool = False


class Server:
    def __init__(self, config: ServerConfig, store: Store | None = None) -> None:
        self.config = config
        config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keys_dir = config.home / "keys"
        self.enrollment = keys.Enrollment(self.keys_dir)
        self.store = store or open_store(config.store_url)
        self.blobs = BlobDir(config.home / "blobs")
        self.sessions: dict[str, Session] = {}
        self.peers: dict[bytes, str] = {}
        self.enrolled: dict[str, str] = {}  # name -> public key
        self.watchers: dict[str, set[bytes]] = {}  # job id -> control peers
        self.barriers: dict[str, QueryBarrier] = {}
        # job id -> agents whose result is still due; kept here so finishing a job needs no store read
        self.outstanding: dict[str, set[str]] = {}
        self.rejected: Counter[str] = Counter()
        self._running = False
        self._last_request = time.monotonic()
        secret = None
        if not config.insecure:
            secret = keys.write_keypair(self.keys_dir, "server").secret
            self.enrolled = self.enrollment.load()
        else:
            log.warning("INSECURE: agents are accepted without keys and traffic is plaintext")
        self.transport = ServerTransport(
            config.agent_endpoint,
            config.control,
            secret_key=secret,
            allowed_keys=self.enrolled.values(),
        )
        self._resume_unfinished()
        self._agent_handlers: dict[Kind, Callable[[Incoming, Message], None]] = {
            Kind.HELLO: self.on_hello,
            Kind.HEARTBEAT: self.on_heartbeat,
            Kind.GOODBYE: self.on_goodbye,
            Kind.RESULT: self.on_result,
            Kind.QUERY_VALUE: self.on_query_value,
            Kind.BLOB_REQUEST: self.on_blob_request,
        }
        self._control_handlers: dict[Kind, Callable[[Incoming, Message], Message | None]] = {
            Kind.SUBMIT: self.on_submit,
            Kind.BLOB_HAS: self.on_blob_has,
            Kind.BLOB_PUT: self.on_blob_put,
            Kind.NODES: self.on_nodes,
            Kind.JOBS: self.on_jobs,
            Kind.JOB_INFO: self.on_job_info,
            Kind.PURGE: self.on_purge,
            Kind.RELOAD_KEYS: self.on_reload_keys,
            Kind.WATCH: self.on_watch,
        }

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        self._running = True
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        log.info("listening for agents on %s, clients on %s", self.transport.agent_endpoint, self.config.control)
        next_tick = time.monotonic() + self.config.heartbeat_interval
        try:
            while self._running:
                timeout = max(0, int((next_tick - time.monotonic()) * 1000))
                for incoming in self.transport.poll(timeout):
                    self.dispatch(incoming)
                if time.monotonic() >= next_tick:
                    self._drain()
                    self.expire_silent_agents()
                    self.store.flush()
                    self._exit_when_idle()
                    next_tick = time.monotonic() + self.config.heartbeat_interval
        finally:
            self.store.close()
            self.transport.close()

    def stop(self) -> None:
        self._running = False

    def _exit_when_idle(self) -> None:
        idle = self.config.idle_timeout
        if idle is not None and not self.outstanding and time.monotonic() - self._last_request > idle:
            log.info("no client request for %.0f s and no job outstanding; exiting", idle)
            self.stop()

    def _drain(self) -> None:
        """Handle everything already waiting before judging anyone silent.

        After a long request (thousands of jobs in one submit) the agents' heartbeats sit in the
        socket behind thousands of results; expiring before reading them would call live agents
        dead for the time the server itself was busy.
        """
        for _ in range(MAX_DRAIN_ROUNDS):
            batch = self.transport.poll(0)
            if not batch:
                return
            for incoming in batch:
                self.dispatch(incoming)

    def dispatch(self, incoming: Incoming) -> None:
        try:
            msg = protocol.unpack(incoming.frame)
        except ProtocolError as exc:
            self._reject(incoming, str(exc))
            return
        if incoming.channel is Channel.AGENTS:
            handler = self._agent_handlers.get(msg.kind)
            if handler is None:
                self._reject(incoming, f"{msg.kind.value} is not a message agents may send", msg)
                return
            try:
                handler(incoming, msg)
            except (ProtocolError, BlobError, ValueError, KeyError, TypeError) as exc:
                self._reject(incoming, str(exc), msg)
            return
        self._last_request = time.monotonic()
        control = self._control_handlers.get(msg.kind)
        if control is None:
            self._reject(incoming, f"{msg.kind.value} is not a client request", msg)
            return
        try:
            reply = control(incoming, msg)
        except (ProtocolError, BlobError, ValueError, KeyError, TypeError) as exc:
            self._reject(incoming, str(exc), msg)
            return
        if reply is not None:
            self.transport.send(Channel.CONTROL, incoming.peer, reply.pack())

    def _reject(self, incoming: Incoming, reason: str, msg: Message | None = None) -> None:
        """Count a bad message, log the first of each reason, answer with an error."""
        origin = self.peers.get(incoming.peer, incoming.peer.hex()[:12])
        self.rejected[reason] += 1
        if self.rejected[reason] == 1:
            log.warning("rejected a message from %s %s: %s", incoming.channel.value, origin, reason)
        error = (msg.reply(Kind.ERROR, reason=reason) if msg else Message(Kind.ERROR, {"reason": reason})).pack()
        self.transport.send(incoming.channel, incoming.peer, error)

    # -- agents ---------------------------------------------------------------------------

    def on_hello(self, incoming: Incoming, msg: Message) -> None:
        claimed = require(msg, "name", str)
        session_id = require(msg, "session", str)
        name = self._identify(incoming, claimed)
        previous = self.sessions.get(name)
        if previous is not None:
            self.peers.pop(previous.peer, None)
        inflight = previous.inflight if previous is not None else {}
        info = {k: v for k, v in msg.data.items() if k in ("hostname", "pid", "version", "session")}
        session = Session(name, incoming.peer, session_id, incoming.key, time.time(), info, inflight=inflight)
        self.sessions[name] = session
        self.peers[incoming.peer] = name
        self._record_node(session)
        welcome = Message(Kind.WELCOME, {"name": name, "heartbeat": self.config.heartbeat_interval,
                                         "expiry": self.config.expiry})
        self.transport.send(Channel.AGENTS, incoming.peer, welcome.pack())
        # Whatever was sent before may not have arrived; the agent's journal makes resending safe.
        for spec in list(session.inflight.values()):
            self._send_job(session, spec)
        log.info("agent %s connected (session %s, %d jobs resent)", name, session_id[:8], len(session.inflight))

    def _identify(self, incoming: Incoming, claimed: str) -> str:
        """The agent's name: from its enrolled key when secure, else what it claims."""
        keys.check_name(claimed)
        if incoming.key is None:
            return claimed
        owners = [name for name, key in self.enrolled.items() if key == incoming.key]
        if not owners:
            raise ValueError("key is not enrolled")
        if owners[0] != claimed:
            raise ValueError(f"this key is enrolled as {owners[0]!r}, not {claimed!r}")
        return owners[0]

    def _session_of(self, incoming: Incoming) -> Session | None:
        name = self.peers.get(incoming.peer)
        session = self.sessions.get(name) if name else None
        if session is None or session.state is not NodeState.ACTIVE or session.key != incoming.key:
            self.transport.send(
                Channel.AGENTS, incoming.peer, Message(Kind.ERROR, {"reason": "hello-required"}).pack()
            )
            return None
        session.last_seen = time.time()
        return session

    def on_heartbeat(self, incoming: Incoming, msg: Message) -> None:
        session = self._session_of(incoming)
        if session is not None:
            # Liveness lives in the session; the store hears of a node when its state changes.
            self.transport.send(Channel.AGENTS, incoming.peer, _HEARTBEAT)

    def on_goodbye(self, incoming: Incoming, msg: Message) -> None:
        session = self._session_of(incoming)
        if session is not None:
            reason = str(msg.data.get("reason", "no reason given"))
            log.info("agent %s left (%s); %d jobs sent to it not started", session.name, reason, len(session.inflight))
            self._drop(session, f"{NOT_STARTED_PREFIX} agent {session.name} left ({reason}) before running the job")

    def on_result(self, incoming: Incoming, msg: Message) -> None:
        session = self._session_of(incoming)
        if session is None or msg.job is None:
            return
        result = JobResult.from_wire(require(msg, "result", dict))
        if session.inflight.pop(msg.job, None) is None:
            return  # a duplicate (resent after a reconnect) or a job this server never sent
        self._finish(msg.job, session.name, result)

    def _finish(self, job_id: str, agent: str, result: JobResult) -> None:
        self.store.set_result(job_id, agent, result)
        event = Message(Kind.EVENT, {"agent": agent, "result": result.to_wire()}, job=job_id).pack()
        for peer in self.watchers.get(job_id, ()):
            self.transport.send(Channel.CONTROL, peer, event)
        barrier = self.barriers.get(job_id)
        if barrier is not None:
            if result.state is JobState.LOST:
                barrier.targets.discard(agent)
            self._maybe_release(job_id, barrier)
        waiting = self.outstanding.get(job_id)
        if waiting is not None:
            waiting.discard(agent)
            if not waiting:
                del self.outstanding[job_id]
                self.watchers.pop(job_id, None)
                self.barriers.pop(job_id, None)

    def on_query_value(self, incoming: Incoming, msg: Message) -> None:
        session = self._session_of(incoming)
        if session is None or msg.job is None:
            return
        barrier = self.barriers.get(msg.job)
        if barrier is None:
            raise ValueError(f"job {msg.job} is not a QUERY in progress")
        barrier.values[session.name] = msg.data.get("value")
        self._maybe_release(msg.job, barrier)

    def _maybe_release(self, job_id: str, barrier: QueryBarrier) -> None:
        if barrier.sent or not barrier.targets.issubset(barrier.values):
            return
        barrier.sent = True
        answer = Message(Kind.QUERY_MAP, {"key": barrier.key, "values": barrier.values}, job=job_id).pack()
        for name in barrier.targets:
            session = self.sessions.get(name)
            if session is not None and session.state is NodeState.ACTIVE:
                self.transport.send(Channel.AGENTS, session.peer, answer)

    def on_blob_request(self, incoming: Incoming, msg: Message) -> None:
        if self._session_of(incoming) is None:
            return
        sha = check_sha(require(msg, "sha", str))
        offset = require(msg, "offset", int)
        if not self.blobs.has(sha):
            reply = msg.reply(Kind.BLOB_CHUNK, sha=sha, error=f"the server has no blob {sha[:12]}")
        else:
            size = min(require(msg, "size", int), protocol.CHUNK_SIZE)
            reply = msg.reply(Kind.BLOB_CHUNK, sha=sha, offset=offset, total=self.blobs.size(sha),
                              data=self.blobs.read(sha, offset, size))
        self.transport.send(Channel.AGENTS, incoming.peer, reply.pack())

    def expire_silent_agents(self) -> None:
        deadline = time.time() - self.config.expiry
        for session in self.sessions.values():
            if session.state is NodeState.ACTIVE and session.last_seen < deadline:
                log.warning("agent %s expired; %d in-flight jobs lost", session.name, len(session.inflight))
                self._drop(session, f"agent {session.name} expired (no heartbeat for {self.config.expiry} s)")

    def _drop(self, session: Session, reason: str) -> None:
        """Mark an agent gone (expired or revoked) and end its in-flight jobs as lost, with `reason`."""
        session.state = NodeState.EXPIRED
        self.peers.pop(session.peer, None)
        self._record_node(session)
        lost = list(session.inflight)
        session.inflight.clear()
        for job_id in lost:
            self._finish(job_id, session.name, JobResult.failure(reason, state=JobState.LOST))

    def _record_node(self, session: Session) -> None:
        self.store.put_node(session.name, self._node_info(session))

    def _node_info(self, session: Session) -> dict[str, Any]:
        return {
            **session.info,
            "state": session.state.value,
            "last_heartbeat": session.last_seen,
            "expires": session.last_seen + self.config.expiry,
        }

    def _send_job(self, session: Session, spec: JobSpec) -> None:
        self.transport.send(Channel.AGENTS, session.peer, self._job_frame(spec))

    @staticmethod
    def _job_frame(spec: JobSpec) -> bytes:
        return Message(Kind.JOB, {"spec": spec.to_wire()}, job=spec.id, parent=spec.parent).pack()

    def _resume_unfinished(self) -> None:
        """After a restart with a durable store, jobs still in flight wait for their agents' hello."""
        for record, agents in self.store.unfinished():
            for agent in agents:
                session = self.sessions.setdefault(
                    agent, Session(agent, b"", "", None, time.time(), {}, state=NodeState.EXPIRED)
                )
                session.inflight[record.spec.id] = record.spec
                self.outstanding.setdefault(record.spec.id, set()).add(agent)
                self.store.set_result(record.spec.id, agent, JobResult(state=JobState.SENT))

    # -- clients --------------------------------------------------------------------------

    def on_submit(self, incoming: Incoming, msg: Message) -> Message:
        raw_jobs = require(msg, "jobs", list)
        specs = [JobSpec.from_wire(raw) for raw in raw_jobs]
        errors = [error for spec in specs for error in self._check_job(spec)]
        if errors:
            return msg.reply(Kind.ERROR, reason="; ".join(errors))
        accepted = []
        for spec in specs:
            targets = spec.targets or sorted(
                name for name, s in self.sessions.items() if s.state is NodeState.ACTIVE
            )
            if not targets:
                return msg.reply(Kind.ERROR, reason="no active agents to run the job on")
            spec.targets = targets
            if msg.data.get("watch", True):
                self.watchers.setdefault(spec.id, set()).add(incoming.peer)
            self._accept(spec)
            accepted.append({"id": spec.id, "targets": targets})
        return msg.reply(jobs=accepted)

    def _check_job(self, spec: JobSpec) -> list[str]:
        errors = []
        if spec.verb.upper() not in components.REGISTRY:
            errors.append(f"job {spec.label or spec.id}: unknown verb {spec.verb!r}")
        known = set(self.sessions) | set(self.enrolled)
        unknown = [t for t in spec.targets if t not in known]
        if unknown:
            errors.append(f"job {spec.label or spec.id}: unknown targets {', '.join(sorted(unknown))}")
        missing = [sha for sha in spec.blobs if not self.blobs.has(check_sha(sha))]
        if missing:
            errors.append(f"job {spec.label or spec.id}: files not uploaded: {', '.join(s[:12] for s in missing)}")
        if spec.id in self.outstanding or self.store.get_job(spec.id) is not None:
            errors.append(f"job id {spec.id} was already submitted")
        return errors

    def _accept(self, spec: JobSpec) -> None:
        """Record the job and send it to every connected target: one packed frame for all."""
        active = {t for t in spec.targets if (s := self.sessions.get(t)) is not None and s.state is NodeState.ACTIVE}
        results = {t: JobResult(state=JobState.SENT if t in active else JobState.PENDING) for t in spec.targets}
        self.store.add_job(JobRecord(spec=spec, submitted=time.time(), results=results))
        self.outstanding[spec.id] = set(spec.targets)
        if spec.verb.upper() == "QUERY":
            self.barriers[spec.id] = QueryBarrier(key=str(spec.args.get("key")), targets=set(spec.targets))
        frame = self._job_frame(spec)
        for target in spec.targets:
            if target not in active:
                self._finish(spec.id, target, JobResult.failure(f"agent {target} is not connected",
                                                                state=JobState.LOST))
                continue
            session = self.sessions[target]
            session.inflight[spec.id] = spec
            self.transport.send(Channel.AGENTS, session.peer, frame)

    def on_watch(self, incoming: Incoming, msg: Message) -> Message:
        """Subscribe to results of existing jobs; results already in are pushed at once."""
        for job_id in require(msg, "jobs", list):
            record = self.store.get_job(job_id)
            if record is None:
                return msg.reply(Kind.ERROR, reason=f"no job {job_id}")
            self.watchers.setdefault(job_id, set()).add(incoming.peer)
            for agent, result in record.results.items():
                if result.state.finished:
                    event = Message(Kind.EVENT, {"agent": agent, "result": result.to_wire()}, job=job_id)
                    self.transport.send(Channel.CONTROL, incoming.peer, event.pack())
        return msg.reply()

    def on_blob_has(self, incoming: Incoming, msg: Message) -> Message:
        wanted = [check_sha(sha) for sha in require(msg, "shas", list)]
        return msg.reply(missing=[sha for sha in wanted if not self.blobs.has(sha)])

    def on_blob_put(self, incoming: Incoming, msg: Message) -> Message:
        sha = check_sha(require(msg, "sha", str))
        data = require(msg, "data", bytes)
        self.blobs.write_chunk(sha, require(msg, "offset", int), data)
        if msg.data.get("last"):
            self.blobs.commit(sha)
        return msg.reply(sha=sha)

    def on_nodes(self, incoming: Incoming, msg: Message) -> Message:
        nodes = self.store.nodes()
        for name, session in self.sessions.items():
            nodes[name] = {**nodes.get(name, {}), **self._node_info(session), "inflight": len(session.inflight)}
        return msg.reply(nodes=nodes)

    def on_jobs(self, incoming: Incoming, msg: Message) -> Message:
        return msg.reply(jobs=[record.summary() for record in self.store.jobs()])

    def on_job_info(self, incoming: Incoming, msg: Message) -> Message:
        job_id = require(msg, "job", str)
        record = self.store.get_job(job_id)
        if record is None:
            matches = [r for r in self.store.jobs() if r.spec.id.startswith(job_id)] if len(job_id) >= 6 else []
            if len(matches) != 1:
                return msg.reply(Kind.ERROR, reason=f"no job {job_id}")
            record = matches[0]
        return msg.reply(job=record.to_wire())

    def on_purge(self, incoming: Incoming, msg: Message) -> Message:
        purged_jobs = self.store.purge_jobs() if msg.data.get("jobs") else 0
        purged_nodes = 0
        if msg.data.get("nodes"):
            for name, session in list(self.sessions.items()):
                if session.state is not NodeState.ACTIVE:
                    del self.sessions[name]
            for name in self.store.nodes():
                if name not in self.sessions:
                    self.store.delete_node(name)
                    purged_nodes += 1
        return msg.reply(jobs=purged_jobs, nodes=purged_nodes)

    def on_reload_keys(self, incoming: Incoming, msg: Message) -> Message:
        """Re-read enrolled keys; sessions whose key was revoked are dropped at once."""
        if self.config.insecure:
            return msg.reply(Kind.ERROR, reason="the server runs --insecure: there are no keys to reload")
        self.enrolled = self.enrollment.load()
        self.transport.allow(self.enrolled.values())
        dropped = []
        for session in self.sessions.values():
            if session.state is NodeState.ACTIVE and self.enrolled.get(session.name) != session.key:
                self._drop(session, f"agent {session.name}'s key was revoked")
                dropped.append(session.name)
        return msg.reply(enrolled=sorted(self.enrolled), dropped=dropped)
