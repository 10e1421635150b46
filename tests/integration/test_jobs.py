"""Jobs through a real server and three real agents: verbs, ordering, parents, listings."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.integration.cluster import Cluster


def results(completed: "object") -> list[dict]:  # type: ignore[type-arg]
    return json.loads(completed.stdout)  # type: ignore[attr-defined]


def by_agent(rows: list[dict]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {row["agent"]: row for row in rows}


def test_run_reaches_every_agent_with_its_own_environment(cluster: Cluster) -> None:
    done = cluster.directord("exec", "--verb", "RUN", "echo $DIRECTORD_TEST_AGENT | tr a-z A-Z", "--json", check=True)
    rows = by_agent(results(done))
    assert set(rows) == {"a1", "a2", "a3"}
    for name, row in rows.items():
        assert row["state"] == "success" and row["rc"] == 0
        assert row["stdout"] == name.upper() + "\n"
        assert row["ended"] >= row["started"] > 0


def test_run_env_cwd_and_nonzero_exit(cluster: Cluster, tmp_path: Path) -> None:
    done = cluster.directord("exec", "--verb", "RUN", f"--env GREETING=hi --cwd {tmp_path} echo $GREETING $(pwd); exit 3",
                             "--target", "a2", "--json")
    assert done.returncode == 1
    [row] = results(done)
    assert row["agent"] == "a2" and row["state"] == "failed" and row["rc"] == 3
    assert row["stdout"] == f"hi {tmp_path}\n"


def test_run_timeout_kills_the_whole_process_group(cluster: Cluster, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    done = cluster.directord("exec", "--verb", "RUN", f"--timeout 1 sleep 300 & echo $! > {pidfile}; wait",
                             "--target", "a1", "--json")
    [row] = results(done)
    assert row["state"] == "failed" and "timed out" in row["stderr"]
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_parent_runs_in_order_and_a_failure_stops_only_that_agent(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "order"
    (tmp_path / "o.yaml").write_text(f"""
- jobs:
    - RUN: echo one-$DIRECTORD_TEST_AGENT >> {log}
    - RUN: test "$DIRECTORD_TEST_AGENT" != a2
    - RUN: echo two-$DIRECTORD_TEST_AGENT >> {log}
""")
    done = cluster.directord("orchestrate", str(tmp_path / "o.yaml"), "--json")
    assert done.returncode == 1
    rows = results(done)
    states = {(r["agent"], r["job"]): r["state"] for r in rows}
    assert sorted(states.values()).count("skipped") == 1
    skipped = [r for r in rows if r["state"] == "skipped"]
    assert skipped[0]["agent"] == "a2" and "earlier job" in skipped[0]["error"]
    lines = log.read_text().split()
    assert sorted(lines) == ["one-a1", "one-a2", "one-a3", "two-a1", "two-a3"]
    for agent in ("a1", "a3"):
        assert lines.index(f"one-{agent}") < lines.index(f"two-{agent}")


def test_async_parents_run_side_by_side(cluster: Cluster, tmp_path: Path) -> None:
    """Each async entry waits for a file the other writes: serial execution would time out."""
    a, b = tmp_path / "a", tmp_path / "b"
    wait_for = "for i in $(seq 100); do test -e {0} && exit 0; sleep 0.05; done; exit 1"
    (tmp_path / "o.yaml").write_text(f"""
- targets: [a1]
  async: true
  jobs:
    - RUN: touch {a}; {wait_for.format(b)}
- targets: [a1]
  async: true
  jobs:
    - RUN: touch {b}; {wait_for.format(a)}
""")
    done = cluster.directord("orchestrate", str(tmp_path / "o.yaml"), "--json", check=True)
    assert [r["state"] for r in results(done)] == ["success", "success"]


def test_arg_env_and_templating(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "o.yaml").write_text("""
- targets: [a1]
  jobs:
    - ARG: colour blue
    - ENV: SHADE dark
    - RUN: echo {{ colour }}-$SHADE
    - RUN: echo {{ undefined_thing }}
""")
    done = cluster.directord("orchestrate", str(tmp_path / "o.yaml"), "--json")
    rows = results(done)
    assert [r["state"] for r in rows] == ["success", "success", "success", "failed"]
    assert rows[2]["stdout"] == "blue-dark\n"
    assert "undefined_thing" in rows[3]["stderr"]


def test_query_hands_every_agents_value_to_all(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "o.yaml").write_text("""
- jobs:
    - RUN: --stdout-arg whoami echo me-$DIRECTORD_TEST_AGENT
    - QUERY: whoami
    - RUN: echo {{ query.whoami.a1 }},{{ query.whoami.a2 }},{{ query.whoami.a3 }}
""")
    done = cluster.directord("orchestrate", str(tmp_path / "o.yaml"), "--json", check=True)
    last = [r for r in results(done) if r["stdout"].startswith("me-a1,")]
    assert len(last) == 3 and {r["stdout"] for r in last} == {"me-a1,me-a2,me-a3\n"}


def test_copy_ships_verified_files_and_refuses_paths_outside_allowed_roots(
    make_cluster: object, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    cluster: Cluster = make_cluster(agents=())  # type: ignore[operator]
    cluster.start_agent("a1", extra=["--allowed-root", str(allowed)])
    cluster.wait_active("a1")
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several chunks
    done = cluster.directord("exec", "--verb", "COPY", f"--chmod 0640 {source} {allowed}/out.bin", "--json", check=True)
    [row] = results(done)
    assert row["changed"] is True
    assert (allowed / "out.bin").read_bytes() == source.read_bytes()
    assert oct((allowed / "out.bin").stat().st_mode & 0o777) == "0o640"
    again = results(cluster.directord("exec", "--verb", "COPY", f"--chmod 0640 {source} {allowed}/out.bin", "--json"))
    assert again[0]["changed"] is False
    outside = cluster.directord("exec", "--verb", "COPY", f"{source} {allowed}/../escaped.bin", "--json")
    assert outside.returncode == 1 and not (tmp_path / "escaped.bin").exists()
    assert "allowed" in results(outside)[0]["stderr"]


def test_wait_and_pkg_report_honestly(cluster: Cluster, tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    (tmp_path / "o.yaml").write_text(f"""
- targets: [a1]
  jobs:
    - RUN: (sleep 0.5; touch {flag}) > /dev/null 2>&1 &
    - WAIT: --cmd "test -e {flag}" --retry 40 --retry-wait 0.1
    - PKG: coreutils
""")
    rows = results(cluster.directord("orchestrate", str(tmp_path / "o.yaml"), "--json", check=True))
    assert [r["state"] for r in rows] == ["success"] * 3
    assert rows[2]["changed"] is False  # coreutils is always installed


def test_manage_lists_nodes_jobs_and_job_info(cluster: Cluster) -> None:
    done = results(cluster.directord("exec", "--verb", "RUN", "echo out; echo err >&2", "--json", check=True))
    job_id = done[0]["job"]
    nodes = json.loads(cluster.directord("manage", "--list-nodes", "--json", check=True).stdout)
    assert {n: nodes[n]["state"] for n in ("a1", "a2", "a3")} == {"a1": "active", "a2": "active", "a3": "active"}
    assert all(nodes[n]["expires"] > nodes[n]["last_heartbeat"] for n in ("a1", "a2", "a3"))
    jobs = json.loads(cluster.directord("manage", "--list-jobs", "--json", check=True).stdout)
    assert [j["id"] for j in jobs] == [job_id] and jobs[0]["states"] == {"success": 3}
    info = json.loads(cluster.directord("manage", "--job-info", job_id[:10], "--json", check=True).stdout)
    for agent in ("a1", "a2", "a3"):
        result = info["results"][agent]
        assert (result["rc"], result["stdout"], result["stderr"]) == (0, "out\n", "err\n")
        assert result["ended"] >= result["started"]
    text = cluster.directord("manage", "--job-info", job_id, check=True).stdout
    assert "a2" in text and "stderr: err" in text
    cluster.directord("manage", "--purge-jobs", check=True)
    assert json.loads(cluster.directord("manage", "--list-jobs", "--json", check=True).stdout) == []


def test_bad_input_gets_a_clear_error_naming_what_and_where(cluster: Cluster, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("- targets: [a1]\n  jobs:\n    - RUN: echo ok\n   - RUN: x\n")
    done = cluster.directord("orchestrate", str(broken))
    assert done.returncode == 2 and f"{broken}:4" in done.stderr
    unknown_verb = tmp_path / "verb.yaml"
    unknown_verb.write_text("- jobs:\n    - RUN: echo ok\n    - FROB: x\n")
    done = cluster.directord("orchestrate", str(unknown_verb))
    assert done.returncode == 2 and f"{unknown_verb}:3" in done.stderr and "FROB" in done.stderr
    done = cluster.directord("exec", "--verb", "RUN", "echo hi", "--target", "nosuch")
    assert done.returncode == 2 and "unknown targets nosuch" in done.stderr
    missing = cluster.directord("exec", "--verb", "COPY", f"{tmp_path}/absent /tmp/x")
    assert missing.returncode == 2 and "absent" in missing.stderr
    # nothing was lost: the cluster still works
    assert cluster.directord("exec", "--verb", "RUN", "true").returncode == 0


def test_ansible_modules_run_on_agents_from_cached_payloads(cluster: Cluster, tmp_path: Path) -> None:
    target = tmp_path / "from-ansible"
    target.mkdir()
    spec = f'ansible.builtin.copy content="managed by ansible\\n" dest={target}/$NAME mode=0600'
    first = results(cluster.directord("exec", "--verb", "ANSIBLE", spec.replace("$NAME", "one"), "--json", check=True))
    assert {r["agent"] for r in first} == {"a1", "a2", "a3"}
    changed = [r["changed"] for r in first]
    assert changed.count(True) >= 1  # all agents share this host: the first write changes, the rest may not
    assert (target / "one").read_text() == "managed by ansible\n"
    assert oct((target / "one").stat().st_mode & 0o777) == "0o600"
    second = results(cluster.directord("exec", "--verb", "ANSIBLE", spec.replace("$NAME", "one"), "--json", check=True))
    assert [r["changed"] for r in second] == [False, False, False]
    assert all(r["data"]["dest"] == str(target / "one") for r in second)
    agents_blobs = [cluster.agent_home(name) / "blobs" for name in ("a1", "a2", "a3")]
    assert all(any(p.stat().st_size > 10_000 for p in blobs.iterdir()) for blobs in agents_blobs)
    failing = cluster.directord("exec", "--verb", "ANSIBLE", "ansible.builtin.command /nonexistent/binary",
                                "--target", "a1", "--json")
    assert failing.returncode == 1
    [row] = results(failing)
    assert row["state"] == "failed" and "nonexistent" in (row["error"] + row["stderr"] + str(row["data"]))


def test_unknown_ansible_module_is_refused_before_anything_runs(cluster: Cluster) -> None:
    done = cluster.directord("exec", "--verb", "ANSIBLE", "no.such.module_xyz a=1")
    assert done.returncode == 2 and "no.such.module_xyz" in done.stderr
