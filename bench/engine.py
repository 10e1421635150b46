"""Starting a real Accelerator server (and agents) for the benchmarks, the way a user would.

Same ideas as tests/integration/cluster.py (real `python -m accelerator.cli` processes on
loopback), but keys are written and enrolled in-process before the server starts, which costs
nothing even for a thousand agents, and every process goes through a measuring `Launcher`.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from accelerator import keys, transport
from accelerator.client import Client, ServerUnreachable
from accelerator.protocol import Kind
from bench.measure import Launcher

START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """The environment for benchmark children: this checkout importable, nothing else changed."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def wait_until(what: str, ready: Callable[[], bool], alive: Callable[[], bool],
               timeout: float = START_TIMEOUT, interval: float = 0.05) -> None:
    """Poll `ready` until true; fail fast if the process it depends on died."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise RuntimeError(f"{what}: a process it needs exited (see the logs)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready within {timeout} s")
        time.sleep(interval)


def enroll_agents(home: Path, names: list[str], agent_homes: Path | None = None) -> dict[str, keys.KeyPair]:
    """Create the server pair and one pair per agent, enrolled before the server starts.

    Enrollment files are written directly (one enrolled/NAME.pub each): `Enrollment.enroll`
    re-reads every enrolled key to refuse duplicates, which is quadratic for 1,000 agents.
    With `agent_homes`, each agent's keys/agent.* and keys/server.pub are laid out for a
    real `directord agent --agent-home AGENT_HOMES/NAME`.
    """
    server = keys.write_keypair(home / "keys", "server")
    enrolled = keys.Enrollment(home / "keys").directory
    enrolled.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for name in names:
        if agent_homes is None:
            public, secret = transport.generate_keypair()
            pair = keys.KeyPair(public, secret)
        else:
            key_dir = agent_homes / name / "keys"
            pair = keys.write_keypair(key_dir, "agent")
            (key_dir / "server.pub").write_text(server.public + "\n")
        (enrolled / f"{keys.check_name(name)}.pub").write_text(pair.public + "\n")
        pairs[name] = pair
    return pairs


def start_server(launcher: Launcher, home: Path, endpoint: str, group: str = "cluster",
                 extra: list[str] | None = None) -> None:
    """A secure (Curve) server with the in-memory store; returns once its control socket exists."""
    launcher.start(group, "server", [sys.executable, "-m", "accelerator.cli", "--home", str(home),
                                     "server", "--bind", endpoint, *(extra or [])], env=child_env())
    wait_until("server start", (home / "control.sock").exists, launcher.all_running)


def start_agent(launcher: Launcher, home: Path, endpoint: str, name: str, agent_home: Path) -> None:
    launcher.start("cluster", f"agent-{name}", [
        sys.executable, "-m", "accelerator.cli", "--home", str(home), "agent", "--server", endpoint,
        "--name", name, "--agent-home", str(agent_home)], env=child_env())


def active_agents(home: Path) -> set[str]:
    try:
        with Client(home, timeout=5.0) as client:
            nodes = client.request(Kind.NODES)["nodes"]
    except ServerUnreachable:
        return set()
    return {name for name, info in nodes.items() if info.get("state") == "active"}


def wait_active(launcher: Launcher, home: Path, names: list[str], timeout: float = START_TIMEOUT) -> None:
    wanted = set(names)
    wait_until(f"{len(names)} agents active", lambda: wanted <= active_agents(home),
               launcher.all_running, timeout=timeout, interval=0.1)
