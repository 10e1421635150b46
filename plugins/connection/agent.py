# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection plugin: run commands, and move files, through a persistent Directord Accelerator agent."""

from __future__ import annotations

DOCUMENTATION = r"""
name: agent
short_description: Run tasks through a persistent Directord Accelerator agent
description:
  - Sends each command, file upload and file download of a task as a job over ZeroMQ to an
    agent process that stays up on the host, instead of opening an SSH session per command.
  - Modules that arrive pipelined (new-style Python modules) are not run by a new Python
    process; the agent forks them from a warm interpreter that already imported Ansible's
    module_utils, and the module's zip travels to each host once (cached by its sha256).
  - With no server running, one is started in the background on the controller; it exits by
    itself after I(idle_timeout) seconds without work.  An agent that is not running yet is
    started through the host's own connection (see I(bootstrap_connection)), which is the
    one the play configured when the C(directord.accelerator.linear) or C(free) strategy is used.
  - Commands run with privilege escalation (become) are run by the agent as the commands
    Ansible built; when become has to answer a password prompt, the task's own connection
    runs that command instead.
author: Directord Accelerator developers
version_added: "0.1.0"
options:
  server_home:
    description: Directory of the controller-side server (keys, control socket, file cache, log).
    type: path
    default: ~/.ansible/directord-accelerator
    env: [{name: DIRECTORD_ACCELERATOR_HOME}]
    ini: [{section: directord_accelerator, key: server_home}]
    vars: [{name: ansible_directord_server_home}]
  server_port:
    description: TCP port the server listens on for agents.
    type: int
    default: 7531
    env: [{name: DIRECTORD_ACCELERATOR_PORT}]
    ini: [{section: directord_accelerator, key: server_port}]
    vars: [{name: ansible_directord_server_port}]
  server_bind:
    description: Address the server binds for agents (C(*) = all interfaces; agents authenticate with CurveZMQ keys).
    type: str
    default: "*"
    env: [{name: DIRECTORD_ACCELERATOR_BIND}]
    ini: [{section: directord_accelerator, key: server_bind}]
  server_address:
    description:
      - Address an agent uses to reach the server.  By default, the address the host sees the
        controller's SSH connection come from, or 127.0.0.1 for hosts reached without SSH.
    type: str
    env: [{name: DIRECTORD_ACCELERATOR_SERVER_ADDRESS}]
    ini: [{section: directord_accelerator, key: server_address}]
    vars: [{name: ansible_directord_server_address}]
  idle_timeout:
    description: Seconds without work after which an agent, and the server started for the run, exit.
    type: float
    default: 600
    env: [{name: DIRECTORD_ACCELERATOR_IDLE_TIMEOUT}]
    ini: [{section: directord_accelerator, key: idle_timeout}]
    vars: [{name: ansible_directord_idle_timeout}]
  remote_dir:
    description: Directory on the host for the agent's code, keys, journal and module cache.
    type: str
    default: ~/.directord-accelerator
    env: [{name: DIRECTORD_ACCELERATOR_REMOTE_DIR}]
    ini: [{section: directord_accelerator, key: remote_dir}]
    vars: [{name: ansible_directord_remote_dir}]
  python_interpreter:
    description:
      - Python that runs the agent on the host.  Interpreter discovery values (C(auto), ...) mean C(/usr/bin/python3).
      - Modules pipelined with this same interpreter run in the agent's warm zygote; others run as stock Ansible runs them.
    type: str
    default: /usr/bin/python3
    vars: [{name: ansible_directord_python}, {name: ansible_python_interpreter}]
  bootstrap_connection:
    description:
      - Connection plugin used to start the agent when this plugin is the host's C(ansible_connection)
        (the accelerated strategies use the host's configured connection instead).
    type: str
    default: ssh
    vars: [{name: ansible_directord_bootstrap_connection}]
  remote_addr:
    description: Address of the host, for the bootstrap connection and the agent's name.
    type: str
    default: inventory_hostname
    vars: [{name: inventory_hostname}, {name: ansible_host}, {name: ansible_ssh_host}]
  remote_user:
    description: User the bootstrap connection logs in as (and the agent runs as).
    type: str
    vars: [{name: ansible_user}, {name: ansible_ssh_user}]
  port:
    description: Port of the bootstrap connection.
    type: int
    vars: [{name: ansible_port}, {name: ansible_ssh_port}]
  private_key_file:
    description: Private key of the bootstrap connection.
    type: path
    vars: [{name: ansible_private_key_file}, {name: ansible_ssh_private_key_file}]
  pipelining:
    description: Modules are always pipelined to the agent (no temporary files) unless keep_remote_files is set.
    type: bool
    default: true
"""

import getpass
import os
import re
import shlex
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.plugins.connection import ConnectionBase
from ansible.plugins.loader import connection_loader
from ansible.utils.display import Display

from ansible_collections.directord.accelerator.plugins.plugin_utils import engine  # noqa: F401  (sys.path)
from accelerator import bootstrap, controller
from accelerator.components.ansible import cache_blob
from accelerator.components.remote import INLINE_BYTES
from accelerator.model import NOT_STARTED_PREFIX, JobResult, JobState

display = Display()

_ENV_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
# Connections that reach another machine's shell, or this one's: these can start an agent.
_BOOTSTRAPPABLE = ("ssh", "paramiko_ssh", "paramiko", "local")


class Connection(ConnectionBase):
    """exec_command, put_file and fetch_file as EXEC, ANSIBLE, PUT and FETCH jobs on the host's agent."""

    transport = "directord.accelerator.agent"
    has_pipelining = True
    has_tty = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The host's own connection (set by the accelerated strategies, or made from
        # bootstrap_connection): starts the agent, and runs what the agent cannot.
        self.inner: ConnectionBase | None = None
        self._controller: controller.Controller | None = None
        self._agent = ""

    # -- identity and start-up -------------------------------------------------------------

    @staticmethod
    def accelerates(connection: ConnectionBase) -> bool:
        return connection.transport.rsplit(".", 1)[-1] in _BOOTSTRAPPABLE

    def _connect(self) -> Connection:
        if self._connected:
            return self
        inner = self._inner()
        self._controller = controller.controller_for(controller.ServerSettings(
            home=Path(self.get_option("server_home")).expanduser(),
            port=int(self.get_option("server_port")),
            bind_address=self.get_option("server_bind"),
            idle_timeout=float(self.get_option("idle_timeout")),
        ))
        self._agent = self._agent_name(inner)
        if not self._controller.is_active(self._agent):
            with self._controller.agent_lock(self._agent):
                if not self._controller.is_active(self._agent):
                    self._start_agent(inner)
        self._connected = True
        return self

    def _inner(self) -> ConnectionBase:
        if self.inner is None:
            name = self.get_option("bootstrap_connection")
            inner = connection_loader.get(name, self._play_context)
            if inner is None:
                raise AnsibleError(f"directord agent: bootstrap connection plugin {name!r} not found")
            direct = {key: self.get_option(key) for key in ("remote_user", "port", "private_key_file")}
            direct["host"] = direct["remote_addr"] = self.get_option("remote_addr")
            inner.set_options(direct={k: v for k, v in direct.items() if v is not None})
            self.inner = inner
        return self.inner

    def _agent_name(self, inner: ConnectionBase) -> str:
        """One agent per (connection kind, login user, address, port): the name it is enrolled under."""
        kind = inner.transport.rsplit(".", 1)[-1]
        if kind == "local":
            parts = ["local", getpass.getuser()]
        else:
            address = _first_option(inner, "host", "remote_addr") or self._play_context.remote_addr
            user = _first_option(inner, "remote_user") or self._play_context.remote_user or getpass.getuser()
            port = _first_option(inner, "port") or self._play_context.port or 22
            parts = [kind, str(user), str(address), str(port)]
        return _NAME_UNSAFE.sub("-", "_".join(parts))[:128]

    def _python(self) -> str:
        python = str(self.get_option("python_interpreter") or "")
        return python if python.startswith("/") else "/usr/bin/python3"

    def _start_agent(self, inner: ConnectionBase) -> None:
        assert self._controller is not None
        display.vvv(f"starting the directord agent {self._agent}", host=self._play_context.remote_addr)
        plan = bootstrap.AgentPlan(
            name=self._agent,
            python=self._python(),
            remote_dir=self.get_option("remote_dir"),
            server_address=self.get_option("server_address") or ("127.0.0.1" if inner.transport == "local" else ""),
            server_port=int(self.get_option("server_port")),
            server_public=self._controller.server_public_key(),
            idle_timeout=float(self.get_option("idle_timeout")),
        )
        try:
            public_key = bootstrap.start_agent(_Channel(inner), plan)
            self._controller.enroll(self._agent, public_key)
            self._controller.wait_active(self._agent)
        except (bootstrap.BootstrapError, controller.ControllerError) as exc:
            raise AnsibleConnectionFailure(f"directord agent: {exc}") from None

    # -- the three primitives --------------------------------------------------------------

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        if sudoable and self.become is not None and self.become.expect_prompt():
            # A password prompt needs a terminal conversation: the host's own connection has one.
            return self._inner().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        module = self._pipelined_module(cmd, in_data)
        if module is not None:
            result = self._job("ANSIBLE", *module)
            stdout, stderr = result.stdout.encode(), result.stderr.encode()
        else:
            result = self._job("EXEC", {"command": cmd, "stdin": in_data or None})
            stdout, stderr = result.data.get("stdout", b""), result.data.get("stderr", b"")
        if sudoable and self.become is not None and getattr(self.become, "_id", None) and self.become.check_success(stdout):
            stdout = self.become.strip_become_success(stdout)
        return int(result.rc if result.rc is not None else 255), stdout, stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        self._connect()
        source = Path(in_path)
        if not source.exists():
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        if source.stat().st_size <= INLINE_BYTES:
            self._job("PUT", {"path": out_path, "data": source.read_bytes()}, check=True)
        else:
            sha, cached = cache_blob(source.read_bytes(), ".blob")
            self._job("PUT", {"path": out_path, "blob": sha}, {sha: cached}, check=True)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        self._connect()
        result = self._job("FETCH", {"path": in_path, "offset": 0}, check=True)
        # Created with the remote file's mode (less the umask), as sftp's get does over ssh.
        descriptor = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, result.data.get("mode", 0o644))
        with os.fdopen(descriptor, "wb") as target:
            while True:
                data = result.data.get("data", b"")
                target.write(data)
                if result.data.get("eof") or not data:
                    return
                result = self._job("FETCH", {"path": in_path, "offset": target.tell()}, check=True)

    def get_option(self, option: str, hostvars: dict[str, Any] | None = None) -> Any:
        """Ours, else the host's own connection's (action plugins ask for ssh's `host`, for example)."""
        try:
            return super().get_option(option, hostvars=hostvars)
        except (KeyError, AnsibleError):
            if self.inner is None:
                raise KeyError(option) from None
            return self.inner.get_option(option, hostvars=hostvars)

    def update_vars(self, variables: dict[str, Any]) -> None:
        """The magic connection variables (ansible_connection, ansible_host, ...) a task sees are
        those of the host's own connection when there is one, as in a stock run."""
        if self.inner is not None:
            self.inner.update_vars(variables)
        else:
            super().update_vars(variables)

    def close(self) -> None:
        self._connected = False

    def reset(self) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------

    def _job(self, verb: str, args: dict[str, Any], uploads: dict[str, Path] | None = None, *,
             check: bool = False) -> JobResult:
        assert self._controller is not None
        result = self._controller.run(self._agent, verb, args, uploads=uploads)
        if result.state is JobState.LOST and result.error.startswith(NOT_STARTED_PREFIX):
            # The agent left (idle timeout) as the job reached it, so the job never ran: start a
            # new agent and send it again, once.
            self._connected = False
            self._connect()
            result = self._controller.run(self._agent, verb, args, uploads=uploads)
        if result.state is JobState.LOST:
            raise AnsibleConnectionFailure(f"directord agent {self._agent} went away: {result.error}")
        if result.state is not JobState.SUCCESS and (check or verb in ("EXEC", "ANSIBLE")):
            if verb == "FETCH" and "No such file" in result.error:
                raise AnsibleFileNotFound(result.error)
            raise AnsibleConnectionFailure(f"directord agent {self._agent}: {result.error}")
        return result

    def _pipelined_module(self, cmd: str, in_data: bytes | None) -> tuple[dict[str, Any], dict[str, Path]] | None:
        """ANSIBLE job args for a pipelined AnsiballZ module run by the agent's own Python, else None.

        ActionBase pipelines a module as `/bin/sh -c '[ENV=value ...] PYTHON && sleep 0'` with
        the AnsiballZ wrapper on stdin; anything else (become, another interpreter, an old-style
        module) runs as the command it is.
        """
        if not in_data or b"def _ansiballz_main(" not in in_data:
            return None
        words = _shell_words(cmd)
        if len(words) != 3 or words[1] != "-c":
            return None
        inner_words = _shell_words(words[2])
        if inner_words[-3:] == ["&&", "sleep", "0"]:
            inner_words = inner_words[:-3]
        env = {}
        while inner_words and _ENV_WORD.match(inner_words[0]):
            key, _, value = inner_words.pop(0).partition("=")
            env[key] = value
        if inner_words != [self._python()]:
            return None
        from accelerator.ansiballz import ZipPayload, split_payload

        payload = split_payload(in_data)
        if not isinstance(payload, ZipPayload):
            return None
        sha, path = cache_blob(payload.zip_data, ".zip")
        args = {
            "module": payload.ansible_module, "payload": "zip", "sha256": sha, "module_fqn": payload.module_fqn,
            "profile": payload.profile, "params": payload.params, "extensions": payload.extensions,
            "rlimit_nofile": payload.rlimit_nofile, "env": env, "raw": True, "timeout": None,
        }
        return args, {sha: path}


class _Channel:
    """bootstrap.HostChannel over an Ansible connection, without become."""

    def __init__(self, connection: ConnectionBase) -> None:
        self.connection = connection

    def run(self, command: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        return self.connection.exec_command(command, in_data=stdin, sudoable=False)


def _first_option(connection: ConnectionBase, *names: str) -> Any:
    for name in names:
        try:
            value = connection.get_option(name)
        except KeyError:
            continue
        if value is not None:
            return value
    return None


def _shell_words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return []
