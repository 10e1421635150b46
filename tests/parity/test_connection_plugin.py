"""The connection plugin on its own: stock strategy, `ansible_connection: directord.accelerator.agent`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.parity.harness import REPO, Case, assert_same, jobs_by_verb, public_dir, run_playbook


def test_stock_strategy_with_the_agent_connection_matches_ssh(parity_env: dict, tmp_path: Path) -> None:
    """exec_command, put_file (copy, template) and fetch_file all go through the agent here."""
    case = Case("files_and_commands.yml", mode="connection")
    env = {**parity_env["env"], "ANSIBLE_SSH_COMMON_ARGS": parity_env["hosts"].ssh_args()}
    stock = run_playbook(case, parity_env["inventory"], public_dir(parity_env["roots"], f"{tmp_path.name}-stock"), tmp_path, accelerated=False, extra_env=env)
    server_home = Path(env["DIRECTORD_ACCELERATOR_HOME"])
    before = jobs_by_verb(server_home)
    ours = run_playbook(case, parity_env["inventory"], public_dir(parity_env["roots"], f"{tmp_path.name}-accel"), tmp_path, accelerated=True, extra_env=env)
    assert_same(stock, ours, case)
    after = jobs_by_verb(server_home)
    # 4 hosts: at least one module run, one upload (copy, template) and one fetch each went through agents
    for verb in ("ANSIBLE", "PUT", "FETCH"):
        assert after.get(verb, 0) - before.get(verb, 0) >= 4, (verb, before, after)


@pytest.mark.parametrize("kind, name", [("connection", "directord.accelerator.agent"),
                                        ("strategy", "directord.accelerator.linear"),
                                        ("strategy", "directord.accelerator.free")])
def test_ansible_doc_shows_the_plugin_and_its_options(kind: str, name: str) -> None:
    ansible_doc = Path(sys.executable).parent / "ansible-doc"
    completed = subprocess.run(
        [str(ansible_doc), "-t", kind, name], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections"), "ANSIBLE_NOCOLOR": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    assert name in completed.stdout
    if kind == "connection":
        for option in ("server_port", "idle_timeout", "server_address", "remote_dir", "DIRECTORD_ACCELERATOR_PORT"):
            assert option in completed.stdout, option
