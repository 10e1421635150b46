"""Crashes, restarts and hostile bytes, with real processes: jobs end clearly and run at most once.

Agents and servers are killed with SIGKILL (no chance to clean up), restarted on the same home
or port, and fed malformed frames through raw ZeroMQ sockets; after each, the cluster must
still run jobs, and no job may have run twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
import zmq

from accelerator import components, keys
from accelerator.protocol import MAX_FRAME_BYTES, Kind, Message, unpack
from accelerator.store.redis import split_prefix
from tests.conftest import free_port
from tests.integration.cluster import Cluster, run_spec, wait_for

REPLY_TIMEOUT = 5.0


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- agents that die -------------------------------------------------------------------------


def test_agent_killed_mid_job_is_lost_after_expiry_and_others_finish(
    make_cluster: Callable[..., Cluster], tmp_path: Path, pidfiles: Callable[[str], Path]
) -> None:
    cluster = make_cluster(expiry=3.0)
    started, pid = tmp_path / "started", pidfiles("a1-sleep")
    doomed = run_spec(f"echo $$ > {pid}; touch {started}; sleep 30", ["a1"])
    others = run_spec("sleep 0.3; echo fine-$DIRECTORD_TEST_AGENT", ["a2", "a3"])
    with cluster.client() as client:
        client.submit([doomed, others])
        wait_for(started.exists, 10.0, "the sleep to start on a1")
        cluster.agents["a1"].kill(signal.SIGKILL)
        killed_at = time.monotonic()
        outcomes = {(o.job, o.agent): (o.result, time.monotonic())
                    for o in client.results({doomed.id: {"a1"}, others.id: {"a2", "a3"}},
                                            timeout=cluster.expiry + 10)}
    for agent in ("a2", "a3"):
        result, _ = outcomes[(others.id, agent)]
        assert result.state.value == "success" and result.stdout == f"fine-{agent}\n"
    lost, at = outcomes[(doomed.id, "a1")]
    assert lost.state.value == "lost"
    assert "agent a1" in lost.error and "expired" in lost.error
    waited = at - killed_at
    # Lost by expiry (heartbeat intervals of slack either way), not at once and not never.
    assert cluster.expiry - 1.5 <= waited <= cluster.expiry + 5.0, waited
    assert cluster.nodes()["a1"]["state"] == "expired"


def test_an_agent_leaving_on_its_idle_timeout_is_gone_at_once_not_after_expiry(
    make_cluster: Callable[..., Cluster],
) -> None:
    """It removes its pidfile (a bootstrap must not keep an agent that is leaving) and says goodbye,
    so the server stops counting it as active right away: a controller asking in the seconds before
    expiry would otherwise send it jobs that nobody runs."""
    cluster = make_cluster(agents=(), expiry=30.0)
    idle = cluster.start_agent("idler", extra=["--idle-timeout", "2"])
    # as accelerator.bootstrap writes it: a bootstrap finding the pid alive keeps the agent
    pidfile = cluster.agent_home("idler") / "agent.pid"
    pidfile.write_text(f"{idle.popen.pid}\nlib server key\n")
    cluster.wait_active("idler")
    wait_for(lambda: not pidfile.exists(), 15.0, "the leaving agent to remove its pidfile")
    wait_for(lambda: not idle.alive(), 15.0, "the agent to exit on its idle timeout")
    exited_at = time.monotonic()
    cluster.wait_state("idler", "expired", timeout=5.0)
    assert time.monotonic() - exited_at < 5.0 < cluster.expiry  # not by expiry: by its word
    assert "left (idle for 2 s)" in cluster.logs()


def test_agent_restarted_mid_job_reports_it_lost_and_does_not_rerun_it(
    make_cluster: Callable[..., Cluster], tmp_path: Path, pidfiles: Callable[[str], Path]
) -> None:
    cluster = make_cluster(agents=("a1",))
    ran, pid = tmp_path / "ran", pidfiles("a1-sleep")
    spec = run_spec(f"echo run >> {ran}; echo $$ > {pid}; sleep 30", ["a1"])
    with cluster.client() as client:
        client.submit([spec])
        wait_for(lambda: lines(ran) and lines(pid), 10.0, "the job to start on a1")
        cluster.agents["a1"].kill(signal.SIGKILL)
        os.killpg(int(pid.read_text()), signal.SIGKILL)  # the orphaned command, gone with its host
        cluster.start_agent("a1")  # same home, same journal, long before the server expires it
        [outcome] = list(client.results({spec.id: {"a1"}}, timeout=cluster.expiry))
    assert outcome.result.state.value == "lost"
    # The restarted agent's journal said so (an expiry would read "expired (no heartbeat ...)").
    assert "restarted" in outcome.result.error and "not run again" in outcome.result.error
    cluster.wait_active("a1")
    after = json.loads(cluster.directord("exec", "--verb", "RUN", "echo again", "--json", check=True).stdout)
    assert [(r["agent"], r["stdout"]) for r in after] == [("a1", "again\n")]
    assert lines(ran) == ["run"]


# -- servers that die ------------------------------------------------------------------------


def durable_state(store_url: str, job_id: str, agent: str) -> str | None:
    """The state of (job, agent) as committed to the store, read beside the running server."""
    if store_url.startswith("sqlite://"):
        path = store_url.removeprefix("sqlite://")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT result FROM results WHERE job_id = ? AND agent = ?", (job_id, agent)).fetchone()
        return msgpack.unpackb(row[0])["state"] if row else None
    url, prefix = split_prefix(store_url)
    client = redis.Redis.from_url(url)
    try:
        packed = client.hget(f"{prefix}results:{job_id}", agent)
    finally:
        client.close()
    return msgpack.unpackb(packed)["state"] if packed else None


@pytest.fixture(params=["sqlite", "redis"])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    return f"{request.getfixturevalue('redis_url')}?prefix=test-{uuid.uuid4().hex}:"


def stored_as_sent(store_url: str, job_id: str) -> Callable[[], bool]:
    return lambda: durable_state(store_url, job_id, "a1") == "sent"


def test_a_job_runs_at_most_once_across_a_server_crash(
    make_cluster: Callable[..., Cluster], tmp_path: Path, durable_store: str
) -> None:
    """Two jobs side by side: `quick` ends while the server is down (its resend is answered from
    the agent's journal); `slow` waits for a gate the test opens only once the restarted server
    has resent it (that resend must be ignored: it is still running)."""
    cluster = make_cluster(agents=("a1",), store=durable_store)
    before = json.loads(cluster.directord("exec", "--verb", "RUN", "echo before", "--json", check=True).stdout)
    runs = {name: (tmp_path / f"{name}.started", tmp_path / f"{name}.out") for name in ("quick", "slow")}
    gate = tmp_path / "gate"
    waits = {"quick": "sleep 1", "slow": f"for i in $(seq 300); do test -e {gate} && break; sleep 0.05; done"}
    specs = {name: run_spec(f"echo run >> {started}; {waits[name]}; echo x >> {out}", ["a1"], async_parent=True)
             for name, (started, out) in runs.items()}
    with cluster.client() as client:
        client.submit(specs.values(), watch=False)
    for name, spec in specs.items():
        wait_for(runs[name][0].exists, 10.0, f"{name} to start on a1")
        wait_for(stored_as_sent(durable_store, spec.id), 5.0, f"{name} to be stored")
    assert cluster.server is not None
    cluster.server.kill(signal.SIGKILL)
    wait_for(runs["quick"][1].exists, 5.0, "quick to finish while the server is down")
    server = cluster.restart_server()
    wait_for(lambda: "2 jobs resent" in server.log.read_text(), 10.0, "a1 to reconnect by itself")
    gate.touch()

    with cluster.client() as client:
        client.watch([spec.id for spec in specs.values()])
        outcomes = list(client.results({spec.id: {"a1"} for spec in specs.values()}, timeout=cluster.expiry + 5))
    assert [(o.result.state.value, o.result.rc) for o in outcomes] == [("success", 0)] * 2
    cluster.wait_active("a1", timeout=5.0)
    info = json.loads(cluster.directord("manage", "--job-info", before[0]["job"], "--json", check=True).stdout)
    assert (info["results"]["a1"]["state"], info["results"]["a1"]["stdout"]) == ("success", "before\n")
    # A barrier: each parent runs its jobs in order on a1, so a second run of either job, had a
    # resend queued one, would have finished before these results come back.
    barrier = [run_spec("true", ["a1"], parent=spec.parent, async_parent=True) for spec in specs.values()]
    with cluster.client() as client:
        assert all(o.result.ok for o in client.run(barrier, timeout=15.0))
    for name, (started, out) in runs.items():
        assert (lines(started), lines(out)) == (["run"], ["x"]), f"{name} ran more than once"


# -- hostile bytes ---------------------------------------------------------------------------


class RawPeer:
    """A bare DEALER speaking whatever bytes a test wants, optionally with a Curve key pair."""

    def __init__(self, context: zmq.Context, endpoint: str, *, server_public: str | None = None,
                 keypair: keys.KeyPair | None = None) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if server_public is not None and keypair is not None:
            self.socket.curve_serverkey = server_public.encode()
            self.socket.curve_publickey = keypair.public.encode()
            self.socket.curve_secretkey = keypair.secret.encode()
        self.socket.connect(endpoint)

    def receive(self, timeout: float = REPLY_TIMEOUT) -> Message | None:
        if not self.socket.poll(int(timeout * 1000)):
            return None
        return unpack(self.socket.recv())

    def error_for(self, frame: bytes | list[bytes]) -> str:
        """Send a frame (or several parts) and return the reason of the ERROR it is answered with."""
        if isinstance(frame, list):
            self.socket.send_multipart(frame)
        else:
            self.socket.send(frame)
        reply = self.receive()
        assert reply is not None, "no reply to a malformed frame"
        assert reply.kind is Kind.ERROR, reply
        return str(reply.data["reason"])


def zmq_keypair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def raw(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


MALFORMED: list[tuple[bytes | list[bytes], str]] = [
    (b"\x00\xffthis is not msgpack\xc1", "not msgpack"),
    (raw(["hello", 1]), "expected a map, got list"),
    (raw({"v": 99, "kind": "hello", "id": "x", "data": {}}), "protocol version 99 is not supported"),
    (raw({"v": 1, "kind": "frobnicate", "id": "x", "data": {}}), "unknown message kind 'frobnicate'"),
    (raw({"v": 1, "kind": "hello", "id": "x", "data": []}), "data must be a map"),
    (b"\x80" + b"x" * (MAX_FRAME_BYTES + 1), f"exceeds the {MAX_FRAME_BYTES}-byte limit"),
    ([raw({"v": 1}), b"two parts"], "not msgpack"),  # a DEALER sends one frame per message
]


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def assert_cluster_runs_jobs(cluster: Cluster, agents: set[str]) -> None:
    rows = json.loads(cluster.directord("exec", "--verb", "RUN", "echo ok-$DIRECTORD_TEST_AGENT", "--json",
                                        check=True).stdout)
    assert {r["agent"]: r["stdout"] for r in rows} == {a: f"ok-{a}\n" for a in agents}


def test_malformed_frames_on_both_server_sockets_are_answered_and_harmless(
    make_cluster: Callable[..., Cluster], zmq_context: zmq.Context, tmp_path: Path
) -> None:
    cluster = make_cluster(agents=("a1", "a2"), insecure=True, store=f"sqlite://{tmp_path / 'store.db'}")
    agent_side = RawPeer(zmq_context, cluster.endpoint)
    control_side = RawPeer(zmq_context, f"ipc://{cluster.home / 'control.sock'}")
    for peer in (agent_side, control_side):
        for frame, expected in MALFORMED:
            assert expected in peer.error_for(frame)

    job = Message(Kind.JOB, {"spec": run_spec("touch /tmp/never", []).to_wire()})
    assert "job is not a client request" in control_side.error_for(job.pack())
    assert "job is not a message agents may send" in agent_side.error_for(job.pack())
    submit = Message(Kind.SUBMIT, {"jobs": [{"verb": 7, "args": {}}]})
    assert "string verb" in control_side.error_for(submit.pack())
    submit = Message(Kind.SUBMIT, {"jobs": "RUN rm -rf /"})
    assert "'jobs' must be list" in control_side.error_for(submit.pack())
    command = components.get("RUN").parse("echo never").args
    for bad in ({"parent": ["not", "a", "string"]}, {"id": 12345}):
        submit = Message(Kind.SUBMIT, {"jobs": [{"verb": "RUN", "args": command, "targets": ["a1"], **bad}]})
        assert "must be strings" in control_side.error_for(submit.pack())
    result = Message(Kind.RESULT, {"result": {"state": "success"}}, job="0" * 32)
    assert agent_side.error_for(result.pack()) == "hello-required"  # no session: nothing recorded
    hello = Message(Kind.HELLO, {"name": "../../etc", "session": "s"})
    assert "agent name '../../etc' is invalid" in agent_side.error_for(hello.pack())

    assert cluster.server is not None and cluster.server.alive()
    assert {n: cluster.nodes()[n]["state"] for n in ("a1", "a2")} == {"a1": "active", "a2": "active"}
    assert_cluster_runs_jobs(cluster, {"a1", "a2"})


def test_an_enrolled_peer_sending_garbage_gets_an_error_and_disturbs_no_one(
    make_cluster: Callable[..., Cluster], zmq_context: zmq.Context
) -> None:
    cluster = make_cluster(agents=("a1", "a2"))
    home = cluster.prepare_agent_keys("rogue")  # enrolled under its own name, but no real agent
    server_public = keys.read_public(cluster.home / "keys" / "server.pub")
    rogue = RawPeer(zmq_context, cluster.endpoint, server_public=server_public,
                    keypair=keys.read_keypair(home / "keys", "agent"))
    for frame, expected in MALFORMED:
        assert expected in rogue.error_for(frame)
    hello = Message(Kind.HELLO, {"name": "a1", "session": "s"})
    assert "enrolled as 'rogue', not 'a1'" in rogue.error_for(hello.pack())
    heartbeat = Message(Kind.HEARTBEAT)
    assert rogue.error_for(heartbeat.pack()) == "hello-required"

    stranger = RawPeer(zmq_context, cluster.endpoint, server_public=server_public,
                       keypair=keys.KeyPair(*zmq_keypair()))
    stranger.socket.send(b"garbage")
    assert stranger.receive(timeout=1.0) is None  # an unenrolled key never gets past the handshake

    nodes = cluster.nodes()
    assert {n: nodes[n]["state"] for n in ("a1", "a2")} == {"a1": "active", "a2": "active"}
    assert nodes["a1"]["pid"] == cluster.agents["a1"].popen.pid
    assert "rogue" not in nodes
    assert_cluster_runs_jobs(cluster, {"a1", "a2"})


def test_malformed_jobs_sent_to_an_agent_leave_it_running(tmp_path: Path, zmq_context: zmq.Context) -> None:
    """A fake insecure server (a ROUTER bound here) feeds a real agent bad messages, then a good job."""
    cluster = Cluster(root=tmp_path, insecure=True, port=free_port())
    server = zmq_context.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(cluster.endpoint)
    agent = cluster.start_agent("a1")
    try:
        def receive(kind: Kind, timeout: float = REPLY_TIMEOUT) -> tuple[bytes, Message]:
            deadline = time.monotonic() + timeout
            while server.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                peer, frame = server.recv_multipart()
                msg = unpack(frame)
                if msg.kind is kind:
                    return peer, msg
            raise AssertionError(f"no {kind.value} from the agent within {timeout} s:\n{agent.log.read_text()}")

        peer, hello = receive(Kind.HELLO, timeout=15.0)
        assert hello.data["name"] == "a1"
        welcome = Message(Kind.WELCOME, {"name": "a1", "heartbeat": 0.5, "expiry": 30.0})
        server.send_multipart([peer, welcome.pack()])

        def job(spec: Any, job_id: str) -> bytes:
            return Message(Kind.JOB, {"spec": spec}, job=job_id).pack()

        unknown_verb = {"verb": "FROBNICATE", "args": {}, "id": "job-unknown-verb", "parent": "p-bad"}
        bad_frames = [
            b"\x00\xffgarbage",
            raw(["job", 1]),
            b"\x80" + b"x" * (MAX_FRAME_BYTES + 1),
            Message(Kind.SUBMIT, {"jobs": []}).pack(),  # not a kind a server sends agents
            job("RUN echo this is not a map", "job-spec-string"),
            job({"args": {}, "id": "job-no-verb"}, "job-no-verb"),
            job({"verb": "RUN", "args": ["echo", "hi"], "id": "job-list-args"}, "job-list-args"),
            job({"verb": "RUN", "args": {"command": "echo hi"}, "id": "job-list-parent", "parent": ["x"]},
                "job-list-parent"),
            job({"verb": "RUN", "args": {"command": "echo hi"}, "id": ["unhashable"]}, "job-list-id"),
            job(unknown_verb, "job-unknown-verb"),
        ]
        for frame in bad_frames:
            server.send_multipart([peer, frame])
        good = run_spec("echo fine", ["a1"], id="job-good", parent="p-good")
        server.send_multipart([peer, job(good.to_wire(), good.id)])

        results: dict[str, dict[str, Any]] = {}
        while "job-good" not in results:
            _, msg = receive(Kind.RESULT)
            assert msg.job is not None
            results[msg.job] = msg.data["result"]
        assert agent.alive()
        assert results["job-good"]["state"] == "success" and results["job-good"]["stdout"] == "fine\n"
        assert results["job-unknown-verb"]["state"] == "failed"
        assert "FROBNICATE" in results["job-unknown-verb"]["error"]
        assert set(results) == {"job-good", "job-unknown-verb"}, results  # the malformed ones were dropped
        receive(Kind.HEARTBEAT)  # and it carries on
        assert agent.alive()
    finally:
        print(cluster.logs())
        cluster.stop()
