"""Start a secure server and three local agents, run examples/hello.yaml, show the results.

Everything lives in a temporary directory and is stopped at the end; nothing is installed.
Run through scripts/demo, which prepares the Python environment first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accelerator.client import Client
from accelerator.protocol import Kind

HERE = Path(__file__).resolve().parent
AGENTS = ("agent1", "agent2", "agent3")


def directord(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "accelerator.cli", "--home", str(home), *args]
    return subprocess.run(command, check=check, text=True, capture_output=True)


def start(home: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "accelerator.cli", "--home", str(home), *args],
                                stdout=out, stderr=subprocess.STDOUT)


def wait_until_active(home: Path, names: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 20
    with Client(home) as client:
        while time.monotonic() < deadline:
            nodes = client.request(Kind.NODES)["nodes"]
            if all(nodes.get(name, {}).get("state") == "active" for name in names):
                return
            time.sleep(0.2)
    raise SystemExit(f"agents did not connect; see the logs in {home.parent} (KEEP_DEMO=1 keeps them)")


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="directord-demo-"))
    home = root / "server"
    endpoint = "tcp://127.0.0.1:5599"
    processes = [start(home, root / "server.log", "server", "--bind", endpoint)]
    try:
        while not (home / "keys" / "server.pub").exists():
            time.sleep(0.05)
        for name in AGENTS:
            agent_home = root / name
            directord(home, "keys", "generate", "--name", "agent", "--dir", str(agent_home / "keys"))
            (agent_home / "keys" / "server.pub").write_text((home / "keys" / "server.pub").read_text())
            directord(home, "keys", "enroll", name, "--key-file", str(agent_home / "keys" / "agent.pub"))
            processes.append(start(home, root / f"{name}.log", "agent", "--server", endpoint,
                                   "--name", name, "--agent-home", str(agent_home)))
        wait_until_active(home, AGENTS)
        print(directord(home, "manage", "--list-nodes").stdout)
        started = time.monotonic()
        run = directord(home, "orchestrate", "-v", str(HERE / "hello.yaml"), check=False)
        print(run.stdout + run.stderr)
        print(f"orchestration finished in {time.monotonic() - started:.2f} s (including CLI start-up)")
        return run.returncode
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=10)
        if os.environ.get("KEEP_DEMO") is None:
            subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    sys.exit(main())
