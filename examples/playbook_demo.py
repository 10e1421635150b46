"""The README's main job: examples/site.yml on three local hosts, stock Ansible beside ours.

The hosts are this machine, reached over a real sshd on loopback addresses 127.0.0.2-4 as a
dedicated login user (tests/sshd.py sets that up; it needs root).  The playbook runs three
times: with stock Ansible (linear, pipelining, ssh ControlPersist), with our strategy while no
agent is running yet (the agents are started through ssh: "cold"), and with our strategy
again ("warm").  Each run writes below its own directory; the three final file trees must
be equal, and the times are printed side by side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import free_port  # noqa: E402
from tests.parity.harness import snapshot  # noqa: E402
from tests.sshd import SshHosts, loopback_addresses  # noqa: E402


def run(label: str, inventory: Path, root: Path, env: dict[str, str]) -> float:
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    started = time.monotonic()
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
         str(REPO / "examples" / "site.yml"), "-e", f"root={root}"],
        env=env, capture_output=True, text=True,
    )
    took = time.monotonic() - started
    recap = completed.stdout[completed.stdout.rfind("PLAY RECAP"):].strip()
    print(f"--- {label}: {took:.2f} s\n{recap}\n")
    if completed.returncode != 0:
        sys.exit(f"{label} failed:\n{completed.stdout[-3000:]}{completed.stderr[-2000:]}")
    return took


def main() -> int:
    if os.geteuid() != 0:
        sys.exit("scripts/demo creates a login user and starts sshd on loopback addresses: run it as root")
    work = Path(tempfile.mkdtemp(prefix="directord-demo-"))
    work.chmod(0o755)
    hosts = SshHosts(work / "sshd", loopback_addresses(3), free_port()).start()
    try:
        inventory = work / "inventory"
        inventory.write_text(hosts.inventory(["web1", "web2", "web3"]).replace("[targets]", "[web]"))
        base = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(work / "tmp")}
        ours = {**base, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections"),
                "ANSIBLE_STRATEGY": "directord.accelerator.linear",
                "DIRECTORD_ACCELERATOR_HOME": str(work / "server"),
                "DIRECTORD_ACCELERATOR_PORT": str(free_port()),
                "DIRECTORD_ACCELERATOR_REMOTE_DIR": str(work / "agents" / "home"),
                "DIRECTORD_ACCELERATOR_IDLE_TIMEOUT": "60"}
        (work / "agents").mkdir(mode=0o777)
        (work / "agents").chmod(0o777)
        stock = run("stock Ansible (linear, pipelining, ControlPersist)", inventory, work / "stock", base)
        cold = run("directord.accelerator.linear, agents started on the way (cold)", inventory, work / "cold", ours)
        warm = run("directord.accelerator.linear, agents running (warm)", inventory, work / "warm", ours)
        trees = {name: snapshot(work / name) for name in ("stock", "cold", "warm")}
        same = trees["stock"] == trees["cold"] == trees["warm"]
        print(f"final files identical in all three runs: {'yes' if same else 'NO'}")
        print(f"stock {stock:.2f} s | cold {cold:.2f} s ({stock / cold:.1f}x) | warm {warm:.2f} s ({stock / warm:.1f}x)")
        print("(three hosts, six tasks; bench/playbook_run.py measures 10 and 50 hosts beside mitogen)")
        return 0 if same else 1
    finally:
        for pidfile in [*(work / "agents").glob("home/agents/*/agent.pid"), work / "server" / "server.pid"]:
            try:
                os.kill(int(pidfile.read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass
        hosts.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
