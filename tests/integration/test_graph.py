"""The graph runner through the real CLI, a real server and real agents: order, parallel
branches, resume after a failure, change-driven restarts, inventories, and bad files."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.integration.cluster import Cluster


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def orchestrate(cluster: Cluster, *args: str, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    return cluster.directord("orchestrate", *args, timeout=timeout)


def records(completed) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    return json.loads(completed.stdout)["records"]


def test_independent_branches_overlap_and_the_join_waits_for_both(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "log"
    service = write(tmp_path / "s.yaml", f"""\
        service: branches
        tasks:
          - id: left
            jobs:
              - RUN: "echo left-start $(date +%s.%N) >> {log}; sleep 1; echo left-end $(date +%s.%N) >> {log}"
          - id: right
            jobs:
              - RUN: "echo right-start $(date +%s.%N) >> {log}; sleep 1; echo right-end $(date +%s.%N) >> {log}"
          - id: join
            requires: [left, right]
            jobs:
              - RUN: "echo join $(date +%s.%N) >> {log}"
        """)
    done = orchestrate(cluster, str(service), "--target", "a1", "--json")
    assert done.returncode == 0, done.stderr
    stamps = {line.split()[0]: float(line.split()[1]) for line in log.read_text().splitlines()}
    assert stamps["left-start"] < stamps["right-end"] and stamps["right-start"] < stamps["left-end"], stamps
    assert stamps["join"] >= max(stamps["left-end"], stamps["right-end"])
    assert [r["task"] for r in records(done)][-1] == "branches.join"


def test_a_rerun_resumes_after_the_last_success_and_restart_starts_over(cluster: Cluster, tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "flag"
    service = write(tmp_path / "s.yaml", f"""\
        service: resume
        tasks:
          - id: first
            jobs:
              - RUN: "echo first >> {log}"
          - id: second
            requires: [first]
            register: probe
            jobs:
              - RUN: "test -e {flag} && echo second >> {log}"
          - id: third
            requires: [second]
            jobs:
              - RUN: "echo third rc={{{{ probe.rc }}}} >> {log}"
        """)
    failed = orchestrate(cluster, str(service), "--target", "a1", "--target", "a2")
    assert failed.returncode == 1
    assert "resume.second: non-zero return code" in failed.stdout
    flag.touch()
    resumed = orchestrate(cluster, str(service), "--target", "a1", "--target", "a2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed  [a1] resume.first" in resumed.stdout
    # first ran once per agent, in the failed run only; the registered rc was 0 in the rerun
    assert log.read_text().splitlines().count("first") == 2
    assert log.read_text().splitlines().count("third rc=0") == 2
    again = orchestrate(cluster, str(service), "--target", "a1", "--restart")
    assert again.returncode == 0
    assert log.read_text().splitlines().count("first") == 3  # a successful run left no checkpoints


def test_a_restart_job_runs_only_when_something_upstream_changed(cluster: Cluster, tmp_path: Path) -> None:
    conf, log = tmp_path / "app.conf", tmp_path / "restarts"
    service = write(tmp_path / "s.yaml", f"""\
        service: app
        defaults: {{setting: one}}
        tasks:
          - id: config
            jobs:
              - WRITE: {{dest: "{conf}", content: "setting={{{{ setting }}}}\\n"}}
          - id: restart
            requires: [config]
            on_change: true
            jobs:
              - RUN: "echo restarted >> {log}"
        """)
    assert orchestrate(cluster, str(service), "--target", "a1").returncode == 0
    quiet = orchestrate(cluster, str(service), "--target", "a1", "--json")
    assert {r["task"]: r["status"] for r in records(quiet)} == {"app.config": "ok", "app.restart": "skipped"}
    changed = orchestrate(cluster, str(service), "--target", "a1", "-e", "setting=two", "--json")
    assert {r["task"]: r["status"] for r in records(changed)} == {"app.config": "changed", "app.restart": "changed"}
    assert log.read_text().splitlines() == ["restarted", "restarted"]
    assert conf.read_text() == "setting=two\n"


def test_inventory_layers_variables_and_orders_services_across_hosts(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write(tmp_path / "db.yaml", f"""\
        service: db
        tasks:
          - id: init
            jobs:
              - RUN: "sleep 0.5; echo ready > {out}/db-{{{{ inventory_hostname }}}}"
        """)
    write(tmp_path / "web.yaml", f"""\
        service: web
        requires: [db]
        defaults: {{port: 80, label: default}}
        tasks:
          - id: check-db
            jobs:
              - RUN: "cat {out}/db-dbhost > {out}/web-{{{{ inventory_hostname }}}}"
          - id: config
            requires: [check-db]
            jobs:
              - RUN: "echo {{{{ port }}}} {{{{ label }}}} {{{{ groups['frontends'] | join(',') }}}} {{{{ hostvars['dbhost'].role }}}} >> {out}/web-{{{{ inventory_hostname }}}}"
        """)
    inventory = write(tmp_path / "inventory.yaml", """\
        services: [db.yaml, web.yaml]
        vars: {label: everyone}
        hosts:
          dbhost: {agent: a1, services: [db], vars: {role: database}}
          web1: {agent: a2, vars: {port: 8080}}
          web2: {agent: a3}
        groups:
          frontends: {hosts: [web1, web2], services: [web], vars: {label: front}}
        """)
    done = orchestrate(cluster, "-i", str(inventory))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "web-web1").read_text() == "ready\n8080 front web1,web2 database\n"
    assert (out / "web-web2").read_text() == "ready\n80 front web1,web2 database\n"


def test_dry_run_prints_levels_and_dot_without_running(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    service = write(tmp_path / "s.yaml", f"""\
        service: plan
        tasks:
          - {{id: a, name: First, jobs: [{{RUN: "touch {marker}"}}]}}
          - {{id: b, requires: [a], jobs: [{{RUN: "touch {marker}"}}]}}
          - {{id: c, requires: [a], jobs: [{{RUN: "touch {marker}"}}]}}
        """)
    text = orchestrate(cluster, str(service), "--target", "a1", "--dry-run")
    assert text.returncode == 0
    assert "level 1:\n  plan.a  'First'\nlevel 2:\n  plan.b  'b'  (after plan.a)\n  plan.c  'c'  (after plan.a)" in text.stdout
    dot = orchestrate(cluster, str(service), "--target", "a1", "--dry-run", "--graph", "dot")
    assert '"plan.a" -> "plan.b";' in dot.stdout and '"plan.a" -> "plan.c";' in dot.stdout
    assert not marker.exists()


def test_broken_services_are_refused_with_file_line_and_field(cluster: Cluster, tmp_path: Path) -> None:
    cases = {
        "schema": ("service: s\ntasks:\n  - id: a\n    jobs: [{RUN: x}]\n  - id: b\n    register: not-a-name\n"
                   "    jobs: [{RUN: x}]\n", ":5: tasks[1].register: 'not-a-name' does not match"),
        "verb": ("service: s\ntasks:\n  - id: a\n    jobs:\n      - RUNN: x\n", ":5: unknown verb 'RUNN'"),
        "cycle": ("service: s\ntasks:\n  - {id: a, requires: [b], jobs: [{RUN: x}]}\n"
                  "  - {id: b, requires: [a], jobs: [{RUN: x}]}\n", "dependency cycle: s."),
        "requires": ("service: s\ntasks:\n  - {id: a, requires: [nowhere], jobs: [{RUN: x}]}\n",
                     ":3: a requires or is needed by 'nowhere'"),
        "yaml": ("service: s\ntasks:\n  - id: a\n   jobs: []\n", ":4: not valid YAML"),
        "duplicate": ("service: s\ntasks:\n  - {id: a, jobs: [{RUN: x}]}\n  - {id: a, jobs: [{RUN: x}]}\n",
                      ":4: task id 'a' is already used at"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        done = orchestrate(cluster, str(path), "--target", "a1")
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert str(path) in done.stderr and expected in done.stderr, (name, done.stderr)


def test_rollback_on_failure_undoes_the_finished_tasks_of_the_failed_service_last_first(
        cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "log"
    service = write(tmp_path / "s.yaml", f"""\
        service: app
        tasks:
          - id: unpack
            rollback: [{{RUN: "rm {tmp_path}/unpacked; echo undo-unpack >> {log}"}}]
            jobs: [{{RUN: "touch {tmp_path}/unpacked; echo unpack >> {log}"}}]
          - id: configure
            requires: [unpack]
            rollback: [{{RUN: "rm {tmp_path}/configured; echo undo-configure >> {log}"}}]
            jobs: [{{RUN: "touch {tmp_path}/configured; echo configure >> {log}"}}]
          - id: note
            requires: [configure]
            jobs: [{{DEBUG: {{msg: no rollback here}}}}]
          - id: migrate
            requires: [note]
            rollback: [{{RUN: "echo never-ran >> {log}"}}]
            jobs: [{{RUN: "exit 4"}}]
        """)
    kept = orchestrate(cluster, str(service), "--target", "a1", "--json")
    assert kept.returncode == 1
    assert (tmp_path / "unpacked").exists() and (tmp_path / "configured").exists()
    log.unlink()
    undone = orchestrate(cluster, str(service), "--target", "a1", "--json", "--restart", "--rollback-on-failure")
    assert undone.returncode == 1
    assert log.read_text().splitlines() == ["unpack", "configure", "undo-configure", "undo-unpack"]
    assert not (tmp_path / "unpacked").exists() and not (tmp_path / "configured").exists()
    names = [(r["name"], r["status"]) for r in records(undone)]
    assert names[-2:] == [("rollback: configure", "changed"), ("rollback: unpack", "changed")]
    # what was undone is not resumed: the next run starts with unpack again
    again = orchestrate(cluster, str(service), "--target", "a1")
    assert "resumed  [a1]" not in again.stdout and log.read_text().splitlines()[-1] == "configure"


def test_an_unconverted_role_runs_as_a_graph_node_through_ansible_playbook(cluster: Cluster, tmp_path: Path) -> None:
    import os
    import signal
    import sys

    from tests.conftest import free_port

    role = tmp_path / "roles" / "legacy" / "tasks"
    role.mkdir(parents=True)
    write(role / "main.yml", """\
        - name: read what the converted task wrote
          command: cat {{ out }}/first
          register: first
          changed_when: false
        - name: write from the legacy role
          copy: {content: "legacy saw {{ first.stdout }}\\n", dest: "{{ out }}/legacy"}
        """)
    write(tmp_path / "s.yaml", f"""\
        service: mixed
        tasks:
          - id: first
            jobs: [{{WRITE: {{dest: "{tmp_path}/first", content: "converted\\n"}}}}]
          - id: legacy
            requires: [first]
            jobs: [{{PLAYBOOK: {{role: legacy, roles_path: roles, extra_vars: {{out: "{tmp_path}"}}}}}}]
          - id: last
            requires: [legacy]
            register: seen
            jobs: [{{RUN: "cat {tmp_path}/legacy"}}]
        """)
    inventory = write(tmp_path / "inventory.yaml", f"""\
        services: [s.yaml]
        hosts:
          web1: {{agent: a1, services: [mixed], vars: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}}}
        """)
    playbook_home = tmp_path / "playbook-server"
    env = {"DIRECTORD_ACCELERATOR_HOME": str(playbook_home), "DIRECTORD_ACCELERATOR_PORT": str(free_port()),
           "DIRECTORD_ACCELERATOR_REMOTE_DIR": str(tmp_path / "agents-home"), "DIRECTORD_ACCELERATOR_IDLE_TIMEOUT": "30"}
    try:
        first = cluster.directord("orchestrate", "-i", str(inventory), "--json", env=env, timeout=300)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert (tmp_path / "legacy").read_text() == "legacy saw converted\n"
        assert [(r["task"], r["status"]) for r in records(first)] == [
            ("mixed.first", "changed"), ("mixed.legacy", "changed"), ("mixed.last", "changed")]
        # the role ran through the accelerated strategy, which started its own server and an agent
        assert (playbook_home / "server.log").exists() and list(tmp_path.glob("agents-home/agents/*/agent.pid"))
    finally:
        for pidfile in [*tmp_path.glob("agents-home/agents/*/agent.pid"), playbook_home / "server.pid"]:
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass


def test_a_reused_register_name_is_judged_on_the_new_result(cluster: Cluster, tmp_path: Path) -> None:
    service = write(tmp_path / "s.yaml", """\
        service: reuse
        tasks:
          - id: first
            register: result
            failed_when: false
            jobs: [{RUN: "exit 1"}]
          - id: second
            requires: [first]
            register: result
            failed_when: result.rc != 0
            changed_when: result.rc == 5
            jobs: [{RUN: "exit 0"}]
        """)
    done = orchestrate(cluster, str(service), "--target", "a1", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(r["task"], r["status"]) for r in records(done)] == [("reuse.first", "changed"), ("reuse.second", "ok")]
