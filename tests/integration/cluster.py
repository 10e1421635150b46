"""Real processes on loopback: a `directord server` and agents, each its own Python process.

Tests drive them through the real CLI and the real control socket; nothing is mocked.  Every
process started here is killed when the test ends, and its log is shown if the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from accelerator import components, keys
from accelerator.client import Client
from accelerator.model import JobSpec
from accelerator.protocol import Kind
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def run_spec(command: str, targets: list[str], **fields: Any) -> JobSpec:
    """A RUN job as `directord exec --verb RUN COMMAND` would build it, for Client.submit."""
    return JobSpec(verb="RUN", args=components.get("RUN").parse(command).args, targets=targets,
                   label=command, **fields)


def cli(*args: str, home: Path, check: bool = False, timeout: float = 60.0,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `directord ARGS` the way a user would, from the checkout."""
    completed = subprocess.run(
        [sys.executable, "-m", "accelerator.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=timeout, env={**_env(), **(env or {})},
    )
    if check and completed.returncode != 0:
        raise AssertionError(f"directord {' '.join(args)} exited {completed.returncode}:\n"
                             f"{completed.stdout}\n{completed.stderr}")
    return completed


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    err: Path | None = None  # stderr, when kept apart from the log

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Cluster:
    root: Path
    insecure: bool = False
    store: str = "memory"
    expiry: float = 8.0
    separate_stderr: bool = False  # write each process's stderr to NAME.err instead of its log
    port: int = field(default_factory=free_port)
    server: Process | None = None
    agents: dict[str, Process] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "server"

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.root / f"{name}.log"
        err = self.root / f"{name}.err" if self.separate_stderr else None
        with log.open("ab") as out, (err or log).open("ab") as errors:
            popen = subprocess.Popen(
                [sys.executable, "-m", "accelerator.cli", "--home", str(self.home), *args],
                stdout=out, stderr=errors if err else subprocess.STDOUT, env={**_env(), **(env or {})},
            )
        return Process(name, popen, log, err)

    def start_server(self) -> Process:
        args = ["server", "--bind", self.endpoint, "--store", self.store,
                "--heartbeat", "0.5", "--expiry", str(self.expiry)]
        if self.insecure:
            args.append("--insecure")
        self.server = self._spawn("server", args)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.home / "control.sock").exists():
            if not self.server.alive() or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.server.log.read_text()}")
            time.sleep(0.05)
        return self.server

    def restart_server(self) -> Process:
        """Start the server again on the same port and home (the old one must be dead)."""
        assert self.server is None or not self.server.alive(), "the server is still running"
        (self.home / "control.sock").unlink(missing_ok=True)  # left behind by a killed server
        return self.start_server()

    def agent_home(self, name: str) -> Path:
        return self.root / f"agent-{name}"

    def prepare_agent_keys(self, name: str, *, enroll: bool = True, server_key: Path | None = None) -> Path:
        """Give an agent its own key pair and the server's public key; enroll it if asked."""
        home = self.agent_home(name)
        pair = keys.write_keypair(home / "keys", "agent")
        source = server_key or self.home / "keys" / "server.pub"
        (home / "keys" / "server.pub").write_text(source.read_text())
        if enroll:
            # One argument: a Z85 key may start with '-', which argparse would take for an option.
            cli("keys", "enroll", name, f"--key={pair.public}", home=self.home, check=True)
        return home

    def start_agent(self, name: str, *, enroll: bool = True, extra: list[str] | None = None,
                    env: dict[str, str] | None = None, claim: str | None = None) -> Process:
        """Start agent `name` (its home, keys and log); `claim` makes it say hello as another name."""
        home = self.agent_home(name)
        if not self.insecure and not (home / "keys" / "agent.secret").exists():
            self.prepare_agent_keys(name, enroll=enroll)
        args = ["agent", "--server", self.endpoint, "--name", claim or name, "--agent-home", str(home),
                "--heartbeat", "0.5", *(extra or [])]
        if self.insecure:
            args.append("--insecure")
        process = self._spawn(f"agent-{name}", args, env={"DIRECTORD_TEST_AGENT": name, **(env or {})})
        self.agents[name] = process
        return process

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.home, timeout=timeout)

    def nodes(self) -> dict[str, dict[str, Any]]:
        with self.client() as client:
            return client.request(Kind.NODES)["nodes"]

    def wait_active(self, *names: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            if all(nodes.get(n, {}).get("state") == "active" for n in names):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(self.agents[n].log.read_text() for n in names if n in self.agents)
                raise AssertionError(f"agents {names} not active; nodes: {nodes}\n{logs}")
            time.sleep(0.1)

    def assert_never_active(self, *names: str, duration: float) -> None:
        """Watch the node list for `duration` seconds: none of `names` may show up as active."""
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            nodes = self.nodes()
            active = [n for n in names if nodes.get(n, {}).get("state") == "active"]
            assert not active, f"{active} became active: {nodes}"
            time.sleep(0.1)

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.nodes().get(name, {}).get("state") != state:
            if time.monotonic() > deadline:
                raise AssertionError(f"agent {name} never became {state}: {self.nodes().get(name)}")
            time.sleep(0.1)

    def directord(self, *args: str, check: bool = False, timeout: float = 60.0,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return cli(*args, home=self.home, check=check, timeout=timeout, env=env)

    def stop(self) -> None:
        """SIGTERM every process first, then wait for each: they wind down side by side."""
        processes = list(self.agents.values()) + ([self.server] if self.server else [])
        for process in processes:
            if process.alive():
                process.popen.send_signal(signal.SIGTERM)
        for process in processes:
            process.kill(signal.SIGTERM)

    def logs(self) -> str:
        processes = ([self.server] if self.server else []) + list(self.agents.values())
        return "\n".join(
            f"--- {p.name} ---\n{p.log.read_text()[-4000:]}"
            + (f"\n--- {p.name} (stderr) ---\n{p.err.read_text()[-4000:]}" if p.err else "")
            for p in processes
        )
