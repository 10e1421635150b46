"""Start an agent on a host through a connection the controller already has (ssh, local, ...).

Nothing needs to be installed on the host beyond a Python 3.9+: the controller ships a
"bundle" (this package, plus pyzmq and msgpack when the host's Python lacks them) as a gzipped
tar, unpacked under REMOTE_DIR/lib/BUNDLE_ID, and starts the agent from there, detached from
the connection.  The agent makes its own key pair on the host (the secret never travels); the
controller enrolls the public key it prints.  Two round trips on any host: a probe, then one
command that unpacks the bundle (sent on its stdin when the host lacks it) and starts the
agent; none at all once the agent is connected.  Every round trip counts: a cold playbook
run starts all its hosts' agents at once, on the same controller CPUs.

pyzmq is a compiled extension, so the bundle must match the host's Python and machine: it is
copied from the controller's own installation when those match, and otherwise downloaded once
as wheels (pip, from the package index) into the controller's cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import accelerator

DEPENDENCIES = ("zmq", "msgpack")  # import names the agent needs beyond the standard library
_WHEEL_PROJECTS = ("pyzmq", "msgpack")
_SKIP_SUFFIXES = (".pyc", ".pyo")


class BootstrapError(RuntimeError):
    """The agent could not be started on a host; the text names the host and the step."""


class HostChannel(Protocol):
    """What bootstrapping needs from the host's own connection."""

    def run(self, command: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        """Run a shell command line on the host (no become), feeding it `stdin`."""


@dataclass(frozen=True, slots=True)
class AgentPlan:
    name: str  # the enrolled name, e.g. ssh-dacc-127.0.0.2-22
    python: str  # the host's interpreter that runs the agent
    remote_dir: str  # e.g. ~/.directord-accelerator
    server_address: str  # how the host reaches the controller; "" = the ssh client's address
    server_port: int
    server_public: str
    idle_timeout: float


@dataclass(frozen=True, slots=True)
class HostFacts:
    python: str  # major.minor
    machine: str
    executable: str
    base: str  # remote_dir, expanded
    has_dependencies: bool
    bundles: frozenset[str]
    client_address: str  # from SSH_CONNECTION, "" when not over ssh


_PROBE = r"""
import json, os, platform, sys
base = os.path.expanduser(sys.argv[1])
try:
    import zmq, msgpack
    deps = True
except Exception:
    deps = False
lib = os.path.join(base, "lib")
bundles = [n for n in os.listdir(lib) if os.path.exists(os.path.join(lib, n, ".complete"))] if os.path.isdir(lib) else []
ssh = os.environ.get("SSH_CONNECTION", "").split()
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "machine": platform.machine(),
                  "executable": sys.executable, "base": base, "deps": deps, "bundles": bundles,
                  "client": ssh[0] if ssh else ""}))
"""

# Unpacks the bundle arriving on stdin (when the last argument says one follows; stdin may
# be a terminal otherwise) into its directory, atomically: agents started concurrently from
# the same remote directory never see half a bundle.
_UNPACK = r"""
import io, os, shutil, sys, tarfile, tempfile
if sys.argv[7] == "bundle-on-stdin":
    data = sys.stdin.buffer.read()
    os.makedirs(os.path.dirname(lib), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(os.path.dirname(lib)), 0o700)
    work = tempfile.mkdtemp(dir=os.path.dirname(lib), prefix=".unpack-")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name.startswith(("/", "..")) or "/../" in member.name or not (member.isfile() or member.isdir()):
                sys.exit("unsafe member in bundle: %s" % member.name)
        tar.extractall(work)
    open(os.path.join(work, ".complete"), "w").close()
    try:
        os.rename(work, lib)
    except OSError:
        shutil.rmtree(work)
        if not os.path.exists(os.path.join(lib, ".complete")):
            raise
"""

# Runs with the bundle on sys.path.  Keeps a running agent that serves the same server with
# the same code; replaces one that does not.  Prints the agent's public key.
_START = r"""
import json, os, signal, subprocess, sys
lib, home, name, server, server_public, idle = sys.argv[1:7]
""" + _UNPACK + r"""
sys.path.insert(0, lib)
from pathlib import Path
from accelerator import keys
home = Path(home)
home.mkdir(parents=True, exist_ok=True, mode=0o700)
pair = keys.write_keypair(home / "keys", "agent")
(home / "keys" / "server.pub").write_text(server_public + "\n")
pidfile = home / "agent.pid"  # accelerator.agent.PIDFILE; the agent removes it when it leaves
wanted = " ".join([lib, server, server_public])
running = False
try:
    pid_text, was = pidfile.read_text().split("\n", 1)
    pid = int(pid_text)
    os.kill(pid, 0)
    if was.strip() == wanted:
        running = True
    else:
        os.kill(pid, signal.SIGTERM)
except (OSError, ValueError):
    pass
if not running:
    main = "import sys; sys.path.insert(0, sys.argv.pop(1)); from accelerator.cli import main; sys.exit(main(sys.argv[1:]))"
    with open(home / "agent.log", "ab") as log:
        agent = subprocess.Popen(
            [sys.executable, "-c", main, lib, "agent", "--agent-home", str(home), "--server", server,
             "--name", name, "--idle-timeout", idle, "--warm-zygote"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
    pidfile.write_text("%d\n%s\n" % (agent.pid, wanted))
print(json.dumps({"public_key": pair.public, "started": not running}))
"""


def start_agent(channel: HostChannel, plan: AgentPlan) -> str:
    """Make sure the agent runs on the host; return its public key (for enrollment)."""
    facts = probe(channel, plan)
    bundle = bundle_for(facts)
    present = bundle.id in facts.bundles
    address = plan.server_address or facts.client_address or "127.0.0.1"
    endpoint = f"tcp://{_bracket(address)}:{plan.server_port}"
    out = _checked(channel, _python_command(
        plan.python, _START, f"{facts.base}/lib/{bundle.id}", f"{facts.base}/agents/{plan.name}", plan.name,
        endpoint, plan.server_public, str(plan.idle_timeout), "" if present else "bundle-on-stdin",
    ), plan, "unpack the bundle and start the agent", stdin=None if present else bundle.path.read_bytes())
    try:
        return str(json.loads(out.strip().splitlines()[-1])["public_key"])
    except (ValueError, KeyError, IndexError):
        raise BootstrapError(f"{plan.name}: the agent start-up printed no key: {out[-500:]!r}") from None


def probe(channel: HostChannel, plan: AgentPlan) -> HostFacts:
    out = _checked(channel, _python_command(plan.python, _PROBE, plan.remote_dir), plan, "probe the host's Python")
    try:
        raw = json.loads(out.strip().splitlines()[-1])
        return HostFacts(
            python=raw["python"], machine=raw["machine"], executable=raw["executable"], base=raw["base"],
            has_dependencies=bool(raw["deps"]), bundles=frozenset(raw["bundles"]), client_address=raw["client"],
        )
    except (ValueError, KeyError, IndexError, TypeError):
        raise BootstrapError(f"{plan.name}: unexpected answer from {plan.python}: {out[-500:]!r}") from None


def _python_command(python: str, code: str, *args: str) -> str:
    return " ".join(shlex.quote(word) for word in (python, "-c", code, *args))


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _checked(channel: HostChannel, command: str, plan: AgentPlan, step: str, stdin: bytes | None = None) -> str:
    rc, out, err = channel.run(command, stdin)
    if rc != 0:
        detail = (err or out).decode(errors="replace").strip()[-1000:]
        raise BootstrapError(f"{plan.name}: cannot {step} (rc={rc}): {detail}")
    return out.decode(errors="replace")


# -- bundles ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bundle:
    id: str
    path: Path


_bundles: dict[tuple[str, str, bool], Bundle] = {}
_bundles_lock = threading.Lock()


def bundle_for(facts: HostFacts) -> Bundle:
    """The tar to ship to a host like this one (built once per process, cached on disk by content)."""
    key = (facts.python, facts.machine, facts.has_dependencies)
    with _bundles_lock:
        if key not in _bundles:
            _bundles[key] = _build_bundle(facts)
        return _bundles[key]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "directord-accelerator" / "bundles"


def _build_bundle(facts: HostFacts) -> Bundle:
    sources: list[tuple[Path, str]] = [(Path(accelerator.__file__).parent, "accelerator")]
    if not facts.has_dependencies:
        sources.extend(_dependency_trees(facts.python, facts.machine))
    data = _tar_bytes(sources)
    bundle_id = hashlib.sha256(data).hexdigest()[:16]
    path = cache_dir() / f"{bundle_id}.tar.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_bytes(gzip.compress(data, mtime=0))
        os.replace(partial, path)
    return Bundle(bundle_id, path)


def _tar_bytes(sources: list[tuple[Path, str]]) -> bytes:
    """A deterministic tar (sorted names, fixed times and owners), so equal content gives an equal id."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, arcroot in sources:
            for path in sorted(root.rglob("*")):
                if path.is_dir() or path.suffix in _SKIP_SUFFIXES or "__pycache__" in path.parts:
                    continue
                info = tarfile.TarInfo(f"{arcroot}/{path.relative_to(root).as_posix()}")
                data = path.read_bytes()
                info.size, info.mtime, info.mode = len(data), 0, 0o755 if os.access(path, os.X_OK) else 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _dependency_trees(python: str, machine: str) -> list[tuple[Path, str]]:
    """(directory, name in bundle) of pyzmq and msgpack for that Python and machine."""
    here = "%d.%d" % sys.version_info[:2]
    if python == here and machine == platform.machine():
        return _installed_trees()
    return _wheel_trees(python, machine)


def _installed_trees() -> list[tuple[Path, str]]:
    import msgpack
    import zmq

    trees = []
    for module in (zmq, msgpack):
        package = Path(module.__file__ or "").parent
        trees.append((package, package.name))
        libs = package.parent / "pyzmq.libs"  # the wheel's bundled libzmq, found through RPATH
        if module is zmq and libs.is_dir():
            trees.append((libs, libs.name))
    return trees


def _wheel_trees(python: str, machine: str) -> list[tuple[Path, str]]:
    """Download (once) and unpack binary wheels for another Python or machine."""
    tag = f"cp{python.replace('.', '')}-{machine}"
    root = cache_dir() / "wheels" / tag
    unpacked = root / "unpacked"
    if not (unpacked / ".complete").exists():
        root.mkdir(parents=True, exist_ok=True)
        platforms = [f"manylinux2014_{machine}", f"manylinux_2_17_{machine}", f"manylinux_2_28_{machine}",
                     f"musllinux_1_1_{machine}"]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                   "--python-version", python, "--implementation", "cp", "--dest", str(root / "wheels"),
                   *[arg for p in platforms for arg in ("--platform", p)], *_WHEEL_PROJECTS]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BootstrapError(f"cannot download pyzmq and msgpack wheels for Python {python} on {machine} "
                                 f"(the host's Python has neither): {done.stderr.strip()[-800:]}")
        for wheel in sorted((root / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(unpacked)
        (unpacked / ".complete").touch()
    names = ["zmq", "msgpack", "pyzmq.libs"]
    return [(unpacked / name, name) for name in names if (unpacked / name).is_dir()]
