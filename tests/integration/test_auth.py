"""Identity and auth with real processes: enrollment, impersonation, pinning, revocation, --insecure.

An agent's identity is its enrolled key; the server accepts only enrolled keys and the agent
pins the server's key.  Each test checks the refusal itself (never active, nothing run) and a
positive control next to it (an agent that should work does), so a pass cannot come from a
cluster that simply is not working.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.integration.cluster import Cluster, Process, run_spec, wait_for

REFUSAL_WINDOW = 1.5  # seconds an agent keeps knocking (3 heartbeats) while we watch it stay out


def rows_of(completed: object) -> dict[str, dict]:  # type: ignore[type-arg]
    return {row["agent"]: row for row in json.loads(completed.stdout)}  # type: ignore[attr-defined]


def log_says(process: Process, text: str) -> Callable[[], bool]:
    return lambda: text in process.log.read_text()


def test_unenrolled_agent_is_never_active_and_cannot_be_targeted(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(agents=("a1", "a2"))
    ghost = cluster.start_agent("ghost", enroll=False)
    cluster.start_agent("late")  # enrolled, started at the same moment: proves the window was long enough
    cluster.wait_active("late")
    cluster.assert_never_active("ghost", duration=REFUSAL_WINDOW)
    assert ghost.alive(), "the refused agent should keep running and retrying, not crash"
    assert "ghost" not in cluster.nodes()

    refused = cluster.directord("exec", "--verb", "RUN", "echo hi", "--target", "ghost")
    assert refused.returncode == 2 and "unknown targets ghost" in refused.stderr

    rows = rows_of(cluster.directord("exec", "--verb", "RUN", "echo $DIRECTORD_TEST_AGENT", "--json", check=True))
    assert set(rows) == {"a1", "a2", "late"}
    assert all(row["state"] == "success" and row["stdout"] == f"{name}\n" for name, row in rows.items())


def test_an_agent_cannot_take_another_agents_enrolled_name(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(agents=("a1",))
    cluster.prepare_agent_keys("a2")  # enrolled, but the real a2 is offline
    real_a1 = cluster.agents["a1"]
    mallory = cluster.start_agent("mallory", claim="a1")  # enrolled as mallory, claims the live a1
    eve = cluster.start_agent("eve", claim="a2")  # enrolled as eve, claims the offline a2

    for process, own, claimed in ((mallory, "mallory", "a1"), (eve, "eve", "a2")):
        refusal = f"this key is enrolled as '{own}', not '{claimed}'"
        wait_for(log_says(process, refusal), 10.0, f"{own} to be told: {refusal}")
    cluster.assert_never_active("a2", "eve", "mallory", duration=REFUSAL_WINDOW)
    assert mallory.alive() and eve.alive()

    nodes = cluster.nodes()
    assert nodes["a1"]["state"] == "active" and nodes["a1"]["pid"] == real_a1.popen.pid
    rows = rows_of(cluster.directord("exec", "--verb", "RUN", "echo $DIRECTORD_TEST_AGENT", "--target", "a1",
                                     "--json", check=True))
    assert rows["a1"]["stdout"] == "a1\n"
    to_a2 = cluster.directord("exec", "--verb", "RUN", "echo $DIRECTORD_TEST_AGENT", "--target", "a2", "--json")
    assert to_a2.returncode == 1
    row = rows_of(to_a2)["a2"]
    assert row["state"] == "lost" and "not connected" in row["error"] and row["stdout"] == ""


def test_agent_pinned_to_another_server_refuses_a_rogue_server(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    trusted = make_cluster(agents=())
    rogue = make_cluster(agents=())
    # The rogue server has the agent's real public key enrolled under its real name: only the
    # agent's pinning of the trusted server's key can keep it from connecting.
    rogue.prepare_agent_keys("x", server_key=trusted.home / "keys" / "server.pub")
    pinned = rogue.start_agent("x")
    rogue.start_agent("good")  # pins the rogue server's own key: the positive control
    rogue.wait_active("good")
    rogue.assert_never_active("x", duration=REFUSAL_WINDOW)
    assert pinned.alive()

    planted = tmp_path / "planted-by-rogue"
    done = rogue.directord("exec", "--verb", "RUN", f"touch {planted}.$DIRECTORD_TEST_AGENT", "--json")
    assert set(rows_of(done)) == {"good"}  # x is not among the active agents
    assert (tmp_path / "planted-by-rogue.good").exists()
    aimed = rogue.directord("exec", "--verb", "RUN", f"touch {planted}.x", "--target", "x", "--json")
    assert rows_of(aimed)["x"]["state"] == "lost"
    rogue.assert_never_active("x", duration=0.5)
    assert not (tmp_path / "planted-by-rogue.x").exists()
    assert "connected to" not in pinned.log.read_text()  # it never even got a WELCOME


def test_revoking_a_key_disconnects_the_agent_at_once(
    make_cluster: Callable[..., Cluster], tmp_path: Path, pidfiles: Callable[[str], Path]
) -> None:
    cluster = make_cluster(agents=("a1", "a2"))
    listed = cluster.directord("keys", "list", check=True).stdout.split()
    assert {"a1", "a2"} <= set(listed)

    started, pid = tmp_path / "started", pidfiles("a1-sleep")
    with cluster.client() as client:
        [job] = client.submit([run_spec(f"echo $$ > {pid}; touch {started}; sleep 30", ["a1"])])
        wait_for(started.exists, 10.0, "the long job to start on a1")
        revoke = cluster.directord("keys", "revoke", "a1", check=True)
        assert "revoked a1" in revoke.stdout and "disconnected: a1" in revoke.stdout
        assert cluster.nodes()["a1"]["state"] == "expired"
        [outcome] = list(client.results({job["id"]: {"a1"}}, timeout=5.0))
    # Lost because of the revocation (an expiry would read "expired (no heartbeat ...)").
    assert outcome.result.state.value == "lost" and "a1's key was revoked" in outcome.result.error

    names = [line.split()[0] for line in cluster.directord("keys", "list", check=True).stdout.splitlines()]
    assert names == ["a2"]
    refusal = "key is not enrolled"
    wait_for(log_says(cluster.agents["a1"], refusal), 10.0, "a1 to be refused on its next hello")
    cluster.assert_never_active("a1", duration=1.0)
    # A fresh connection with the revoked key fails the Curve handshake itself.
    cluster.agents["a1"].kill()
    cluster.start_agent("a1")
    cluster.assert_never_active("a1", duration=REFUSAL_WINDOW)
    rows = rows_of(cluster.directord("exec", "--verb", "RUN", "echo still-here", "--json", check=True))
    assert set(rows) == {"a2"} and rows["a2"]["stdout"] == "still-here\n"


def test_insecure_mode_works_end_to_end_and_warns_loudly(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(agents=("a1", "a2"), insecure=True, separate_stderr=True)
    assert not (cluster.home / "keys" / "server.secret").exists()
    rows = rows_of(cluster.directord("exec", "--verb", "RUN", "echo $DIRECTORD_TEST_AGENT", "--json", check=True))
    assert {name: row["stdout"] for name, row in rows.items()} == {"a1": "a1\n", "a2": "a2\n"}
    processes = [cluster.server, *cluster.agents.values()]
    for process in processes:
        assert process is not None and process.err is not None
        stderr = process.err.read_text()
        assert "WARNING: --insecure" in stderr, f"{process.name} printed no warning on stderr:\n{stderr}"
        assert "WARNING" not in process.log.read_text()  # stdout: the warning went to stderr only
