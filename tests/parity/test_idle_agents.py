"""Runs that start just as the agents (and server) leave on their idle timeout still succeed.

An agent that leaves must not be trusted by the next run's bootstrap, nor handed jobs by a
server that still thinks it alive; the run starts a new one instead.  The runs below start at
moments around the idle timeout, so some of them meet agents in the middle of leaving.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port
from tests.parity.harness import REPO, ansible_playbook

IDLE_TIMEOUT = 3.0
PLAYBOOK = """
- hosts: targets[0:1]
  gather_facts: false
  tasks:
    - command: echo {{ inventory_hostname }}
      register: echoed
    - assert: {that: [echoed.stdout == inventory_hostname]}
"""


def test_runs_starting_as_idle_agents_leave_succeed(parity_env: dict, tmp_path: Path) -> None:
    remote_dir = Path(tempfile.mkdtemp(prefix="directord-idle-remote-"))  # pytest's tmp_path is root's only
    remote_dir.chmod(0o777)
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    env = {
        **os.environ,
        "ANSIBLE_STRATEGY": "directord.accelerator.linear",
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "DIRECTORD_ACCELERATOR_HOME": str(tmp_path / "server"),
        "DIRECTORD_ACCELERATOR_PORT": str(free_port()),
        "DIRECTORD_ACCELERATOR_REMOTE_DIR": str(remote_dir / "agents-home"),
        "DIRECTORD_ACCELERATOR_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    }
    outcomes = []
    try:
        for pause in (0.0, 2.6, 2.9, 3.2, 3.5, 3.8, 4.1, 4.4):
            time.sleep(pause)
            done = subprocess.run([ansible_playbook(), "-i", str(parity_env["inventory"]), str(tmp_path / "site.yml")],
                                  capture_output=True, text=True, env=env, timeout=120)
            outcomes.append((pause, done.returncode, done.stdout[-2000:] + done.stderr[-2000:]))
    finally:
        for pidfile in [*remote_dir.glob("agents-home/agents/*/agent.pid"), tmp_path / "server" / "server.pid"]:
            try:
                os.kill(int(pidfile.read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass
        shutil.rmtree(remote_dir, ignore_errors=True)
    failed = [(pause, output) for pause, rc, output in outcomes if rc != 0]
    assert not failed, "\n\n".join(f"--- after a {pause} s pause ---\n{output}" for pause, output in failed)
