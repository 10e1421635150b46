"""Loopback hosts for the parity suite: a real sshd, a login user with passwordless sudo, and one
address where nothing listens (the unreachable host)."""

from __future__ import annotations

import os
import signal
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import free_port
from tests.sshd import SshHosts, loopback_addresses

SUDOERS = Path("/etc/sudoers.d/directord-parity")
HOSTS = 4


@pytest.fixture(scope="session")
def parity_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    if os.geteuid() != 0:
        pytest.skip("the parity suite creates a login user and a sudoers entry: run it as root (CI does)")
    if shutil.which("sudo") is None:
        pytest.fail("sudo is not installed (scripts/setup-env installs it)")
    base = tmp_path_factory.mktemp("parity")
    hosts = SshHosts(base / "sshd", loopback_addresses(HOSTS, first=20), free_port()).start()
    SUDOERS.write_text(f"{hosts.user} ALL=(ALL) NOPASSWD: ALL\n")
    SUDOERS.chmod(0o440)
    inventory = base / "inventory"
    down_port = free_port()  # nothing listens here
    inventory.write_text(
        hosts.inventory()
        + "[down]\n"
        + f"down1 ansible_host=127.0.0.30 ansible_port={down_port} ansible_user={hosts.user} "
        + f"ansible_ssh_common_args='{hosts.ssh_args()}' ansible_python_interpreter=/usr/bin/python3\n"
    )
    remote_dir = Path(tempfile.mkdtemp(prefix="directord-parity-remote-"))
    remote_dir.chmod(0o777)
    server_home = base / "server"
    accelerator_env = {
        "DIRECTORD_ACCELERATOR_HOME": str(server_home),
        "DIRECTORD_ACCELERATOR_PORT": str(free_port()),
        "DIRECTORD_ACCELERATOR_REMOTE_DIR": str(remote_dir / "agents-home"),
        "DIRECTORD_ACCELERATOR_IDLE_TIMEOUT": "120",
    }
    roots = Path(tempfile.mkdtemp(prefix="directord-parity-roots-"))  # where playbooks write; see harness.public_dir
    roots.chmod(0o755)
    yield {"inventory": inventory, "base": base, "env": accelerator_env, "hosts": hosts, "roots": roots}
    for pidfile in [*remote_dir.glob("agents-home/agents/*/agent.pid"), server_home / "server.pid"]:
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    hosts.stop()
    SUDOERS.unlink(missing_ok=True)
    shutil.rmtree(remote_dir, ignore_errors=True)
    shutil.rmtree(roots, ignore_errors=True)
