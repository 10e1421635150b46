"""convert-role's proof: every corpus role, applied by stock ansible-playbook and, converted, by
`directord orchestrate`, leaves the same files and reports the same outcome per task — on the
first run and on the second (idempotence).

Both sides run on this machine, each role in its own file tree (`eq_root`): stock Ansible with
the local connection, ours through a real server and agent.  All roles run in one
ansible-playbook (one play per role) and one orchestrate run (one inventory host per role), so
the whole corpus costs two runs of each.  Coverage (at least 70% native, nothing unsupported) is
checked on the same conversion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.integration.cluster import Cluster
from tests.parity.harness import differences, snapshot

HERE = Path(__file__).resolve().parent
ROLES = HERE / "roles"
CORPUS = sorted(p.name for p in ROLES.iterdir() if (p / "tasks").is_dir())  # vars-only roles are only dependencies
AGENT = "eq"
# Which runs to compare: 1 (first application) and 2 (idempotence).  scripts/test's second pass
# (ansible-core 2.21) compares the first run only, to keep the whole suite's time in bounds.
RUNS = [int(n) for n in os.environ.get("EQUIVALENCE_RUNS", "1,2").split(",")]
RUN_TIMEOUT = 900


@dataclass
class Outcome:
    """One side's run: exit code, output, per role the task outcomes and the file tree."""

    rc: int
    output: str
    tasks: dict[str, Counter[tuple[str, str]]]  # role -> (FILE:LINE, status) counts
    trees: dict[str, dict[str, Any]]


def _roots(base: Path, side: str) -> dict[str, Path]:
    return {role: base / side / role for role in CORPUS}


def _stock(work: Path, roots: dict[str, Path], gather: dict[str, bool]) -> Outcome:
    inventory = work / "stock-inventory.ini"
    inventory.write_text("".join(f"eq_{role} ansible_connection=local ansible_python_interpreter={sys.executable} "
                                 f"eq_root={root}\n" for role, root in roots.items()))
    playbook = work / "stock.yml"
    # Facts are gathered where the converted service gathers them too (a role that reads none
    # cannot tell the difference, and setup is the slowest module).
    playbook.write_text("".join(f"- hosts: eq_{role}\n  gather_facts: {gather[role]}\n  roles: [{role}]\n"
                                for role in roots))
    record = work / "stock-record.json"
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROLES), "ANSIBLE_CALLBACK_PLUGINS": str(HERE / "callback_plugins"),
           "ANSIBLE_CALLBACKS_ENABLED": "equivalence_record", "EQUIVALENCE_RECORD": str(record),
           "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(work / "tmp")}
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    done = subprocess.run([str(ansible_playbook), "-i", str(inventory), str(playbook)], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, env=env, cwd=work)
    events = json.loads(record.read_text())["events"] if record.exists() else []
    tasks: dict[str, Counter[tuple[str, str]]] = {role: Counter() for role in roots}
    for event in events:
        role = event["host"].removeprefix("eq_")
        path = event["path"]
        if str(ROLES) in path:
            tasks[role][(os.path.relpath(path, ROLES), event["status"])] += 1
    return Outcome(done.returncode, done.stdout + done.stderr, tasks, {r: snapshot(p) for r, p in roots.items()})


def _ours(cluster: Cluster, work: Path, converted: Path, roots: dict[str, Path]) -> Outcome:
    inventory = work / "inventory.yaml"
    hosts = {f"eq_{role}": {"agent": AGENT, "services": [role], "vars": {"eq_root": str(root)}}
             for role, root in roots.items()}
    services = sorted(str(path) for path in converted.glob("*/service.yaml"))  # with vars-only roles (dependencies)
    inventory.write_text(json.dumps({"services": services,
                                     "hosts": hosts, "localhost_agent": AGENT}))
    done = cluster.directord("orchestrate", "-i", str(inventory), "--json", "--restart", timeout=RUN_TIMEOUT)
    tasks: dict[str, Counter[tuple[str, str]]] = {role: Counter() for role in roots}
    try:
        records = json.loads(done.stdout)["records"]
    except json.JSONDecodeError as exc:
        raise AssertionError(f"orchestrate --json printed no JSON ({exc}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    for record in records:
        status = "ignored" if record["ignored"] else record["status"]
        tasks[record["host"].removeprefix("eq_")][(record["source"], status)] += 1
    return Outcome(done.returncode, done.stdout[-20000:] + done.stderr, tasks, {r: snapshot(p) for r, p in roots.items()})


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.skip("the corpus roles run with become: run the equivalence suite as root (CI does)")
    work = tmp_path_factory.mktemp("equivalence")
    converted = work / "converted"
    report = subprocess.run([sys.executable, "-m", "converters.cli", "--all", str(ROLES), "-o", str(converted),
                             "--report", "json"], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    cluster = Cluster(root=work / "cluster")
    cluster.root.mkdir()
    cluster.start_server()
    cluster.start_agent(AGENT)
    cluster.wait_active(AGENT)
    stock_roots, our_roots = _roots(work, "stock"), _roots(work, "ours")
    gather = {role: bool(yaml.safe_load((converted / role / "service.yaml").read_text()).get("gather_facts"))
              for role in CORPUS}
    try:
        runs = {}
        for number in RUNS:
            runs[f"stock{number}"] = _stock(work, stock_roots, gather)
            runs[f"ours{number}"] = _ours(cluster, work, converted, our_roots)
        yield {"report": json.loads(report.stdout), "runs": runs, "roots": (stock_roots, our_roots)}
    finally:
        print(cluster.logs()[-5000:])
        cluster.stop()


def _normalized(tree: dict[str, Any], root: Path) -> dict[str, Any]:
    """The snapshot with this side's root path written as ROOT (snapshot does it for its own root)."""
    return json.loads(json.dumps(tree).replace(str(root), "ROOT"))


@pytest.mark.parametrize("run", RUNS, ids=[("first-run", "second-run")[n - 1] for n in RUNS])
@pytest.mark.parametrize("role", CORPUS)
def test_converted_role_matches_stock(corpus_runs: dict[str, Any], role: str, run: int) -> None:
    stock, ours = corpus_runs["runs"][f"stock{run}"], corpus_runs["runs"][f"ours{run}"]
    stock_roots, our_roots = corpus_runs["roots"]
    assert stock.rc == 0, f"stock run {run} failed:\n{stock.output[-5000:]}"
    left, right = stock.tasks[role], ours.tasks[role]
    assert left, f"stock run {run} recorded no task of {role}"
    if left != right:
        only_stock = sorted((left - right).elements())
        only_ours = sorted((right - left).elements())
        raise AssertionError(f"{role}, run {run}: task outcomes differ\nonly stock: {only_stock}\n"
                             f"only ours: {only_ours}\n=== our output ===\n{ours.output[-6000:]}")
    stock_tree = _normalized(stock.trees[role], stock_roots[role])
    our_tree = _normalized(ours.trees[role], our_roots[role])
    assert stock_tree, f"{role} wrote nothing under its root"
    if stock_tree != our_tree:
        raise AssertionError(f"{role}, run {run}: files differ: {'; '.join(differences(stock_tree, our_tree))[:3000]}")


def test_the_corpus_converts_with_most_tasks_native_and_none_unsupported(corpus_runs: dict[str, Any]) -> None:
    totals = corpus_runs["report"]["totals"]
    unsupported = [(r["role"], t["source"], t["reason"]) for r in corpus_runs["report"]["roles"]
                   for t in r.get("tasks", []) if t["status"] == "unsupported"]
    assert len(CORPUS) >= 15
    assert totals["unreadable"] == 0
    assert not unsupported, unsupported
    assert totals["native"] / totals["tasks"] >= 0.70, totals
