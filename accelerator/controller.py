"""The controller's side of an accelerated Ansible run, without Ansible: server, agents, jobs.

The connection and strategy plugins are thin adapters over this module.  It

- makes sure a server is running for this controller user, starting one in the background
  when none answers (it exits by itself after an idle timeout, like the agents it serves);
- bootstraps an agent on a host through a `HostChannel` (the host's own Ansible connection)
  and waits until it is connected (accelerator.bootstrap does the host side);
- runs one job on one agent and returns its result, with one client per thread (and per
  process: forked workers must not share their parent's ZeroMQ sockets).

Bootstrapping is serialised per agent name with a lock, so the many threads or tasks that
reach a host at once start one agent, not many.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from accelerator import keys
from accelerator.client import Client, ServerError, ServerUnreachable
from accelerator.model import JobResult, JobSpec, JobState
from accelerator.paths import control_endpoint_for
from accelerator.protocol import Kind

DEFAULT_PORT = 7531
SERVER_START_SECONDS = 15.0
AGENT_CONNECT_SECONDS = 30.0
_SERVER_MAIN = "import sys; sys.path.insert(0, sys.argv.pop(1)); from accelerator.cli import main; sys.exit(main(sys.argv[1:]))"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class ControllerError(RuntimeError):
    """The server could not be started or reached, or an agent did not come up; the text says which."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    home: Path  # keys, blobs, control socket, server.log
    port: int = DEFAULT_PORT
    bind_address: str = "*"
    idle_timeout: float = 600.0

    @property
    def agent_endpoint(self) -> str:
        return f"tcp://{self.bind_address}:{self.port}"


class Controller:
    """One per controller process and server home; shared by every thread of a playbook run."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.enrollment = keys.Enrollment(settings.home / "keys")
        self._local = threading.local()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._agent_locks: dict[str, threading.Lock] = {}
        self._ready: set[str] = set()  # agents seen active by this process
        self._uploaded: set[str] = set()  # blobs the server has: no BLOB_HAS round trip per module run
        self._server_starter: threading.Thread | None = None
        self._server_error: ControllerError | None = None

    # -- server ----------------------------------------------------------------------------

    def start_server(self) -> None:
        """Make sure a server runs or is starting, without waiting for it to answer.

        Its key pair exists when this returns (agents are given the public key at start), so
        the hosts' agents can be bootstrapped while the server starts; whatever talks to the
        server waits for it first (`client`).
        """
        home = self.settings.home
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            if self._server_starter is not None:
                return
            with _file_lock(home / "server.lock"):
                keys.write_keypair(home / "keys", "server")
            self._server_starter = threading.Thread(target=self._start_server_or_note_error, name="server-start",
                                                    daemon=True)
            self._server_starter.start()

    def wait_server(self) -> None:
        """Return once the server answers; raise ControllerError when it could not be started."""
        self.start_server()
        assert self._server_starter is not None
        self._server_starter.join()
        if self._server_error is not None:
            raise self._server_error

    def _start_server_or_note_error(self) -> None:
        try:
            self.ensure_server()
        except ControllerError as exc:
            self._server_error = exc

    def ensure_server(self) -> None:
        """Start a server in the background unless one answers on the control socket; wait for it."""
        home = self.settings.home
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._answers(timeout=0.5):
            return
        with _file_lock(home / "server.lock"):
            if self._answers(timeout=0.5):  # another process started it meanwhile
                return
            log_path = home / "server.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-c", _SERVER_MAIN, _PACKAGE_ROOT, "--home", str(home), "server",
                     "--bind", self.settings.agent_endpoint, "--idle-timeout", str(self.settings.idle_timeout)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                )
            (home / "server.pid").write_text(f"{process.pid}\n")
            deadline = time.monotonic() + SERVER_START_SECONDS
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise ControllerError(f"the directord server exited at start (rc={process.returncode}): "
                                          f"{_tail(log_path)}")
                if self._answers(timeout=0.5):
                    return
            raise ControllerError(f"the directord server did not answer within {SERVER_START_SECONDS:.0f} s; "
                                  f"see {log_path}")

    def _answers(self, timeout: float) -> bool:
        if not (self.settings.home / "control.sock").exists():
            return False
        try:
            with Client(endpoint=control_endpoint_for(self.settings.home), timeout=timeout) as probe:
                probe.request(Kind.NODES)
            return True
        except (ServerUnreachable, ServerError):
            return False

    def server_public_key(self) -> str:
        return keys.read_public(self.settings.home / "keys" / "server.pub")

    # -- agents ----------------------------------------------------------------------------

    def agent_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._agent_locks.setdefault(name, threading.Lock())

    def is_active(self, name: str) -> bool:
        if name in self._ready:
            return True
        if self._server_starter is not None and self._server_starter.is_alive():
            return False  # a server still starting has no agent yet; the caller bootstraps (or finds) it
        node = self.client().request(Kind.NODES)["nodes"].get(name) or {}
        if node.get("state") == "active":
            self._ready.add(name)
            return True
        return False

    def forget(self, name: str) -> None:
        """The agent stopped answering: the next task checks (and bootstraps) it again."""
        self._ready.discard(name)

    def enroll(self, name: str, public_key: str) -> None:
        """Accept an agent's key (replacing an older one under the same name) and tell the server."""
        with _file_lock(self.settings.home / "enroll.lock"):
            if self.enrollment.load().get(name) != public_key:
                self.enrollment.revoke(name)
                self.enrollment.enroll(name, public_key)
        self.client().request(Kind.RELOAD_KEYS)

    def wait_active(self, name: str, timeout: float = AGENT_CONNECT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_active(name):
            if time.monotonic() > deadline:
                raise ControllerError(f"agent {name} did not connect to the server within {timeout:.0f} s")
            time.sleep(0.02)

    # -- jobs ------------------------------------------------------------------------------

    def client(self) -> Client:
        """This thread's client; a forked child makes its own (ZeroMQ sockets do not survive fork)."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._local = threading.local()
            self._ready = set()
            self._server_starter = None  # the parent's thread: this process checks for itself
        client = getattr(self._local, "client", None)
        if client is None:
            self.wait_server()
            client = self._local.client = Client(endpoint=control_endpoint_for(self.settings.home), timeout=30.0)
        return client

    def run(self, agent: str, verb: str, args: dict[str, Any], *, uploads: dict[str, Path] | None = None,
            timeout: float | None = None) -> JobResult:
        """Run one job on one agent and wait for its result (LOST when the agent went away)."""
        spec = JobSpec(verb=verb, args=args, targets=[agent], blobs=sorted(uploads or {}),
                       timeout=timeout, async_parent=True)
        client = self.client()
        uploads = uploads or {}
        wait = None if timeout is None else timeout + 30
        try:
            try:
                outcomes = client.run([spec], uploads={s: p for s, p in uploads.items() if s not in self._uploaded},
                                      timeout=wait)
            except ServerError as exc:
                if not uploads or "files not uploaded" not in str(exc):
                    return JobResult.failure(f"the server refused the job: {exc}")
                outcomes = client.run([spec], uploads=uploads, timeout=wait)  # the server lost them: resend
        except (ServerUnreachable, TimeoutError) as exc:
            self.forget(agent)
            return JobResult.failure(str(exc), state=JobState.LOST)
        except ServerError as exc:
            return JobResult.failure(f"the server refused the job: {exc}")
        self._uploaded.update(uploads)
        result = outcomes[0].result
        if result.state is JobState.LOST:
            self.forget(agent)
        return result


_controllers: dict[ServerSettings, Controller] = {}
_controllers_lock = threading.Lock()


def controller_for(settings: ServerSettings) -> Controller:
    """The process-wide Controller for these settings (its server started, maybe not yet up)."""
    with _controllers_lock:
        controller = _controllers.get(settings)
        if controller is None:
            controller = _controllers[settings] = Controller(settings)
        controller.start_server()
        return controller


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Between processes (forked workers, parallel ansible-playbook runs) of this controller user."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip()
    except OSError:
        return "(no log)"
