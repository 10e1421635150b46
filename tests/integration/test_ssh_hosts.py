"""The loopback ssh hosts that parity tests and benchmarks use answer stock Ansible for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import free_port
from tests.sshd import LOGIN_USER, SshHosts, loopback_addresses


def ansible_command(name: str) -> str:
    """The Ansible CLI installed beside the interpreter running the tests."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (pip install ansible-core; scripts/setup-env does it)")
    return found


@pytest.fixture
def ssh_hosts(tmp_path: Path) -> Iterator[SshHosts]:
    hosts = SshHosts(tmp_path / "sshd", loopback_addresses(3), free_port()).start()
    yield hosts
    hosts.stop()


def test_stock_ansible_reaches_each_loopback_host_as_the_login_user(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    inventory.write_text(ssh_hosts.inventory())
    completed = subprocess.run(
        [ansible_command("ansible"), "-i", str(inventory), "targets", "-m", "ansible.builtin.command",
         "-a", "id -un"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    # the ad-hoc output is "NAME | CHANGED | rc=0 >>" followed by the command's stdout
    answers = dict(re.findall(r"^(host\d) \| CHANGED \| rc=0 >>\n(\S+)$", completed.stdout, re.MULTILINE))
    assert answers == {"host1": LOGIN_USER, "host2": LOGIN_USER, "host3": LOGIN_USER}, completed.stdout


def test_one_sshd_refuses_more_addresses_than_it_can_listen_on(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 16"):
        SshHosts(tmp_path, loopback_addresses(17), 2222)


def test_inventory_names_every_address(tmp_path: Path) -> None:
    hosts = SshHosts(tmp_path, loopback_addresses(2, first=20), 2299)
    text = hosts.inventory(["web", "db"])
    assert "web ansible_host=127.0.0.20 ansible_port=2299" in text
    assert "db ansible_host=127.0.0.21" in text
    assert len(text.splitlines()) == 3  # the group header and one line per host
