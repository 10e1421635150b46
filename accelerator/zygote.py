"""Agent side of the ANSIBLE verb: a warm "zygote" process that forks one child per module run.

Starting Python and importing `ansible.module_utils.basic` costs more than most modules take to
run.  The zygote pays that once: it pre-imports the stdlib modules Ansible modules commonly use
and, from the first payload zip it sees, `ansible.module_utils.basic`.  Every run then happens in
a child forked from it, so the warm imports are shared while nothing a module does (globals,
environment, cwd, signal handlers, monkeypatches) survives into the next run.  The zygote itself
never runs module code.

Layout of this file:
- the client (`Zygote`), used by the agent's threads: starts the server process, sends msgpack
  requests with ids over a Unix socketpair, restarts the server when it died;
- the server (`main` and `_Server`), a single-threaded loop: forks children, waits for them
  (SIGCHLD through a wakeup fd), kills a child's process group on timeout, answers with
  {rc, stdout, stderr, timed_out};
- `run_in_zygote`, what the agent's ExecContext.run_module calls: stages files, runs, and turns
  the module's JSON into a JobResult.

Nothing here imports Ansible at module level: agents run where Ansible is not installed, and the
Ansible code a child runs is the one inside the controller-built zip.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gc
import importlib
import itertools
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import IO, Any, TypedDict

import msgpack

from accelerator.model import JobResult, JobState

log = logging.getLogger(__name__)

# Per stream; output beyond this is cut with a marker (a result frame must stay well below the
# server's MAX_FRAME_BYTES once it is wrapped into a JobResult).
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 64 * 1024 * 1024
# How long the client waits beyond a request's own timeout before it declares the zygote wedged.
ANSWER_GRACE = 30.0
# Characters of stdout/stderr quoted in an error text when a module's output is unusable.
ERROR_EXCERPT = 2048

# Imported by the zygote at start: what AnsiballZ modules and module_utils.basic commonly need.
PRELOAD_STDLIB = (
    "json", "os", "subprocess", "shlex", "tempfile", "shutil", "hashlib", "datetime", "locale",
    "selectors", "grp", "pwd", "platform", "signal", "re", "glob", "stat", "zipfile", "runpy",
    "importlib", "typing", "dataclasses",
)
BASIC_IN_ZIP = "ansible/module_utils/basic.py"
_PRELOAD_ANSIBLE = ("ansible.module_utils.basic", "ansible.module_utils._internal._ansiballz._loader")
_LOADER_MODULE = "ansible.module_utils._internal._ansiballz._loader"

# `python -c` rather than `-m accelerator.zygote`: the agent may run from a checkout that is not
# on the default path, and `-m` would import this file twice (as __main__ and as itself).
# The path as it was before the insert is what module children see, without our package root.
_BOOTSTRAP = (
    "import sys; path = list(sys.path); sys.path.insert(0, sys.argv[1]); "
    "from accelerator import zygote; sys.exit(zygote.main(sys.argv[2:], path))"
)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class ZygoteError(RuntimeError):
    """The zygote could not run a request (it died, or never answered); the text says which."""


class _NotSent(ZygoteError):
    """The request never reached a zygote, so sending it to a fresh one is safe."""


class ModuleRequest(TypedDict, total=False):
    """One module run.  `kind` "zip" (the default) runs in the zygote, "script" as a file."""

    kind: str
    # zip payloads
    zip_path: str
    module_fqn: str
    profile: str
    params: str
    extensions: dict[str, Any]
    rlimit_nofile: int
    files: dict[str, str]  # module argument -> local file whose private copy becomes its value
    # whole-script payloads
    script_path: str
    interpreter: list[str]  # from the shebang; [] executes the file itself
    args_text: str | None
    # both
    cwd: str | None
    env: dict[str, str]  # added to the zygote's (the agent's) environment


@dataclass(slots=True)
class RunOutcome:
    """How one module process ended, before its output is interpreted."""

    rc: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    error: str = ""  # the zygote could not start the module at all


# --------------------------------------------------------------------------------------------
# Client


class Zygote:
    """The agent's handle on its zygote process: thread-safe, started lazily, restarted when dead.

    Several agent threads may call `run` at once; each request carries an id, sends are
    serialised by a lock, and one reader thread hands each answer to its waiting caller.
    """

    def __init__(self, workdir: Path, python: str = sys.executable) -> None:
        self.workdir = workdir
        self.python = python
        self._lock = threading.Lock()
        self._connection: _Connection | None = None

    @property
    def pid(self) -> int | None:
        connection = self._connection
        return connection.process.pid if connection else None

    @property
    def alive(self) -> bool:
        connection = self._connection
        return bool(connection and connection.alive)

    def run(self, request: Mapping[str, Any], timeout: float | None) -> RunOutcome:
        """Run one module (a ModuleRequest); raises ZygoteError when the zygote died or did not answer."""
        if request.get("kind", "zip") == "script":
            return run_script(request, timeout, self.workdir, self.python)
        for attempt in (1, 2):
            connection = self._connected()
            try:
                answer = connection.submit({**request, "timeout": timeout})
                break
            except _NotSent:
                if attempt == 2:
                    raise
        return connection.wait(answer, timeout)

    def start(self) -> None:
        """Start the zygote process now rather than on the first run."""
        self._connected()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connected(self) -> _Connection:
        with self._lock:
            if self._connection is None or not self._connection.alive:
                if self._connection is not None:
                    self._connection.close()
                self.workdir.mkdir(parents=True, exist_ok=True)
                self._connection = _Connection(self.python, self.workdir)
            return self._connection


class _Connection:
    """One zygote process and the socket to it; dead for good once the socket hits EOF."""

    def __init__(self, python: str, workdir: Path) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            self.process = subprocess.Popen(
                [python, "-c", _BOOTSTRAP, _PACKAGE_ROOT, str(theirs.fileno()), str(workdir)],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        self.sock = ours
        self.alive = True
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self._state_lock = threading.Lock()  # _pending and alive; never held while blocking
        self._send_lock = threading.Lock()  # whole frames only
        self._reader = threading.Thread(target=self._read_answers, name="zygote-reader", daemon=True)
        self._reader.start()

    def submit(self, request: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        with self._state_lock:
            if not self.alive:
                raise _NotSent("zygote is not running")
            request_id = next(self._ids)
            self._pending[request_id] = answer
        frame = msgpack.packb({**request, "id": request_id}, use_bin_type=True)
        try:
            with self._send_lock:
                self.sock.sendall(frame)
        except OSError as exc:
            with self._state_lock:
                self._pending.pop(request_id, None)
                self.alive = False
            raise _NotSent(f"cannot reach the zygote: {exc}") from None
        return answer

    def wait(self, answer: concurrent.futures.Future[dict[str, Any]], timeout: float | None) -> RunOutcome:
        try:
            reply = answer.result(timeout=None if timeout is None else timeout + ANSWER_GRACE)
        except concurrent.futures.TimeoutError:
            self.close()  # wedged: the next request starts a fresh zygote
            raise ZygoteError("the zygote did not answer in time and was stopped") from None
        return RunOutcome(
            rc=reply.get("rc"),
            stdout=_decode(reply.get("stdout", b"")),
            stderr=_decode(reply.get("stderr", b"")),
            timed_out=bool(reply.get("timed_out")),
            error=str(reply.get("error", "")),
        )

    def close(self) -> None:
        """Closing our end makes the zygote kill its children and exit."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout=5)  # it sees EOF now; closing under its recv() would be EBADF
        self.sock.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _read_answers(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_FRAME_BYTES)
        try:
            while chunk := self.sock.recv(1 << 20):
                unpacker.feed(chunk)
                for reply in unpacker:
                    self._deliver(reply)
        except (OSError, ValueError, msgpack.ExtraData) as exc:
            log.warning("zygote connection broken: %s", exc)
        with self._state_lock:
            self.alive = False
            pending, self._pending = self._pending, {}
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for answer in pending.values():
            answer.set_exception(ZygoteError(f"the zygote exited (rc={self.process.returncode}) during the run"))

    def _deliver(self, reply: Any) -> None:
        request_id = reply.get("id") if isinstance(reply, dict) else None
        with self._state_lock:
            answer = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if answer is None:
            log.warning("zygote answer for an unknown request dropped: %r", request_id)
        else:
            answer.set_result(reply)


def run_script(request: Mapping[str, Any], timeout: float | None, workdir: Path, python: str) -> RunOutcome:
    """The whole-script fallback: run a module file as stock Ansible does, in a new session.

    The script and its arguments file live in a private temporary directory (removed after
    the run), so the cached blob is never executed or modified in place.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="script-") as tmp:
        script = Path(tmp) / "module"
        shutil.copyfile(request["script_path"], script)
        script.chmod(0o700)
        argv = _script_argv(request.get("interpreter") or [], script, python)
        if request.get("args_text") is not None:
            args_file = Path(tmp) / "args"
            args_file.write_text(request["args_text"] or "")
            argv.append(str(args_file))
        return _run_process(argv, request, timeout)


def _script_argv(interpreter: list[str], script: Path, python: str) -> list[str]:
    """Python scripts run with the agent's own Python: the controller's shebang names its host's."""
    words = interpreter[1:] if interpreter and Path(interpreter[0]).name == "env" else interpreter
    if not words:
        return [str(script)]
    if Path(words[0]).name.startswith("python"):
        return [python, str(script)]
    return [*interpreter, str(script)]


def _run_process(argv: list[str], request: Mapping[str, Any], timeout: float | None) -> RunOutcome:
    """Output goes to files, as in the zygote: a daemon the module starts may keep a pipe open."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=request.get("cwd") or None,
                env={**os.environ, **(request.get("env") or {})},
                start_new_session=True,  # own process group, so a timeout can kill all of it
            )
        except OSError as exc:
            return RunOutcome(rc=None, stdout="", stderr="", error=f"cannot start {argv[0]}: {exc}")
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process.pid)
            process.wait()
        return RunOutcome(
            rc=process.returncode, stdout=_decode(_read_capped(out)), stderr=_decode(_read_capped(err)), timed_out=timed_out,
        )


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    """Kill a child's whole group; a child that has not reached setsid() yet is killed alone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# From a module's output to a JobResult


def run_in_zygote(zygote: Zygote, request: Mapping[str, Any], timeout: float | None, raw: bool = False) -> JobResult:
    """Run one module (a ModuleRequest) for the agent's ExecContext.run_module, as a JobResult.

    raw: rc, stdout and stderr as the process left them, for a caller that interprets them.
    """
    started = time.time()
    try:
        with _staged_files(request, zygote.workdir) as staged:
            outcome = zygote.run(staged, timeout)
    except (ZygoteError, OSError, KeyError, ValueError) as exc:
        return JobResult.failure(f"ANSIBLE: cannot run module: {exc}")
    if raw and not outcome.error:
        return JobResult(state=JobState.SUCCESS, rc=outcome.rc, stdout=outcome.stdout, stderr=outcome.stderr,
                         started=started, ended=time.time())
    return module_result(outcome, started, timeout)


@contextlib.contextmanager
def _staged_files(request: Mapping[str, Any], workdir: Path) -> Iterator[Mapping[str, Any]]:
    """Give each `files` argument a private copy of its file, as an action plugin's upload would.

    Modules may move their source into place (copy does: atomic_move renames it), so they must
    never get the agent's cached blob itself.
    """
    files = request.get("files") or {}
    if not files:
        yield request
        return
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="files-") as tmp:
        params = json.loads(request["params"])
        module_args = params["ANSIBLE_MODULE_ARGS"]
        for index, (name, source) in enumerate(sorted(files.items())):
            private = Path(tmp) / f"{index}-{Path(source).name}"
            shutil.copyfile(source, private)
            module_args[name] = str(private)
        yield {**request, "params": json.dumps(params)}


def module_result(outcome: RunOutcome, started: float, timeout: float | None) -> JobResult:
    """Interpret a module's exit: its JSON is the result; anything else is a failure that says why."""
    ended = time.time()
    if outcome.error:
        return JobResult.failure(f"ANSIBLE: {outcome.error}")
    result = _json_object(outcome.stdout)
    if outcome.timed_out:
        error = f"ANSIBLE: module timed out after {timeout} s; its process group was killed"
    elif result is None:
        error = (
            f"ANSIBLE: module output is not JSON (rc={outcome.rc})\n"
            f"stdout: {outcome.stdout[:ERROR_EXCERPT]}\nstderr: {outcome.stderr[:ERROR_EXCERPT]}"
        )
    elif result.get("failed") or outcome.rc != 0:
        error = _failure_text(result, outcome)
    else:
        error = ""
    data = result or {}
    return JobResult(
        state=JobState.FAILED if error else JobState.SUCCESS,
        rc=outcome.rc,
        stdout=_text_field(data, "stdout", outcome.stdout if result is None else ""),
        stderr=_text_field(data, "stderr", outcome.stderr),
        changed=bool(data.get("changed")),
        started=started,
        ended=ended,
        data=data,
        error=error,
    )


def _failure_text(result: dict[str, Any], outcome: RunOutcome) -> str:
    """The module's own message, its exception (with traceback when the module sent one), rc."""
    events = _exception_events(result.get("exception"))
    message = result.get("msg") or next((e["msg"] for e in events if e.get("msg")), None)
    parts = [f"ANSIBLE: {message or 'module failed'} (rc={outcome.rc})"]
    parts.extend(f"caused by: {e['msg']}" for e in events if e.get("msg") and e["msg"] != message)
    parts.extend(e["formatted_traceback"] for e in events if e.get("formatted_traceback"))
    if isinstance(result.get("exception"), str):
        parts.append(result["exception"])
    if outcome.stderr.strip():
        parts.append(f"stderr: {outcome.stderr[:ERROR_EXCERPT]}")
    return "\n".join(parts)


def _exception_events(exception: Any) -> list[dict[str, Any]]:
    """The events of an ErrorSummary (ansible-core 2.19+), following the cause chain."""
    events: list[dict[str, Any]] = []
    event = exception.get("event") if isinstance(exception, dict) else None
    while isinstance(event, dict):
        events.append(event)
        chain = event.get("chain")
        event = chain.get("event") if isinstance(chain, dict) else None
    return events


def _text_field(data: dict[str, Any], key: str, default: str) -> str:
    """Command-like modules report their command's output as fields; show those, not the JSON."""
    value = data.get(key)
    return value if isinstance(value, str) else default


def _json_object(stdout: str) -> dict[str, Any] | None:
    """The module's JSON object, tolerating junk lines around it as stock Ansible does."""
    text = stdout.strip()
    try:
        value = json.loads(text)
    except ValueError:
        lines = text.splitlines(keepends=True)
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("{")), None)
        if start is None:
            return None
        try:
            value, _ = json.JSONDecoder().raw_decode("".join(lines[start:]).lstrip())
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------
# Server


@dataclass(slots=True)
class _Running:
    request_id: int
    stdout: IO[bytes]
    stderr: IO[bytes]
    deadline: float | None
    timed_out: bool = False


@dataclass(slots=True)
class _ChildTask:
    """Everything a freshly forked child needs to become a module run."""

    request: dict[str, Any]
    stdout: IO[bytes]
    stderr: IO[bytes]
    module_path: list[str]


@dataclass(slots=True)
class _Restart:
    """The zygote must re-exec itself fresh; these requests are replayed by the new image."""

    backlog: list[dict[str, Any]]


def main(argv: list[str], module_path: list[str]) -> int:
    """Server entry point: argv = [socket fd, work dir, replay file (after a re-exec)]."""
    fd, workdir = int(argv[0]), Path(argv[1])
    backlog = _load_replay(Path(argv[2])) if len(argv) > 2 else []
    _preload_stdlib()
    server = _Server(socket.socket(fileno=fd), workdir, [p for p in module_path if p not in ("", ".")], backlog)
    outcome = server.serve()
    if isinstance(outcome, _ChildTask):
        _run_child(outcome)  # ends in the module's SystemExit, never returns
    elif isinstance(outcome, _Restart):
        _reexec(fd, workdir, outcome.backlog)
    return 0


def _preload_stdlib() -> None:
    for name in PRELOAD_STDLIB:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    _freeze_heap()


def _freeze_heap() -> None:
    """Exempt what is loaded so far from garbage collection, in the zygote and in its children.

    A child's collections then leave the shared pages alone (no copy-on-write), and the
    interpreter exit every child goes through skips them: that halves the cost of a run.
    """
    gc.collect()
    gc.freeze()


class _Server:
    """The zygote's loop: read requests, fork children, reap them, answer.  Single-threaded,
    because forking a multi-threaded process can leave locks held forever in the child."""

    def __init__(self, sock: socket.socket, workdir: Path, module_path: list[str], backlog: list[dict[str, Any]]) -> None:
        self.sock = sock
        self.workdir = workdir
        self.module_path = module_path
        self.backlog: collections.deque[dict[str, Any]] = collections.deque(backlog)
        self.running: dict[int, _Running] = {}
        self.preloaded: dict[str, int] | None = None  # zip member -> CRC, of what was imported
        self.preload_failed = False
        self.draining = False  # a request needs other Ansible code: finish the runs, then re-exec
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_FRAME_BYTES)
        self.wakeup_read, self.wakeup_write = os.pipe()
        os.set_blocking(self.wakeup_read, False)
        os.set_blocking(self.wakeup_write, False)

    def serve(self) -> _ChildTask | _Restart | None:
        signal.signal(signal.SIGCHLD, _on_sigchld)
        signal.set_wakeup_fd(self.wakeup_write)
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ, "requests")
            selector.register(self.wakeup_read, selectors.EVENT_READ, "children")
            while True:
                task = self._start_backlog()
                if task is not None:
                    return task
                if self.draining and not self.running:
                    return _Restart(list(self.backlog))
                for key, _ in selector.select(self._wait_time()):
                    if key.data == "children":
                        _drain(self.wakeup_read)
                    elif not self._read_requests():
                        self._kill_all()
                        return None
                self._reap()
                self._expire()

    def _read_requests(self) -> bool:
        """Queue what arrived; False when the agent is gone (EOF) or the stream is corrupt."""
        try:
            chunk = self.sock.recv(1 << 20)
        except OSError:
            return False
        if not chunk:
            return False
        self.unpacker.feed(chunk)
        try:
            for request in self.unpacker:
                if isinstance(request, dict) and isinstance(request.get("id"), int):
                    self.backlog.append(request)
                else:
                    log.warning("zygote: request without an id dropped")
        except (ValueError, msgpack.ExtraData) as exc:
            log.warning("zygote: corrupt request stream: %s", exc)
            return False
        return True

    def _start_backlog(self) -> _ChildTask | None:
        while self.backlog and not self.draining:
            request = self.backlog.popleft()
            if not self._ready_for(request):
                self.draining = True
                self.backlog.appendleft(request)
                return None
            task = self._fork(request)
            if task is not None:
                return task
        return None

    def _ready_for(self, request: dict[str, Any]) -> bool:
        """Preload from the first zip; afterwards a zip with other Ansible code needs a fresh zygote."""
        try:
            crcs = _zip_crcs(str(request["zip_path"]))
        except (OSError, KeyError, zipfile.BadZipFile):
            return True  # the child reports the unusable zip as the module's failure
        if self.preloaded is None:
            if not self.preload_failed and BASIC_IN_ZIP in crcs:
                self._preload(str(request["zip_path"]), crcs)
            return True
        return BASIC_IN_ZIP in crcs and all(crcs.get(name, crc) == crc for name, crc in self.preloaded.items())

    def _preload(self, zip_path: str, crcs: dict[str, int]) -> None:
        before = set(sys.modules)
        sys.path.insert(0, zip_path)
        try:
            for name in _PRELOAD_ANSIBLE:
                importlib.import_module(name)
        except Exception as exc:  # a broken zip must not take the zygote down
            log.warning("zygote: cannot preload Ansible from %s: %s", zip_path, exc)
            for name in set(sys.modules) - before:
                del sys.modules[name]
            self.preload_failed = True
            return
        finally:
            sys.path.remove(zip_path)
        prefix = zip_path + os.sep
        loaded = [getattr(sys.modules[name], "__file__", None) or "" for name in set(sys.modules) - before]
        members = {path[len(prefix):] for path in loaded if path.startswith(prefix)} | {BASIC_IN_ZIP}
        self.preloaded = {member: crcs[member] for member in members if member in crcs}
        _freeze_heap()

    def _fork(self, request: dict[str, Any]) -> _ChildTask | None:
        """Fork one run; in the child, return its task (the zygote's loop must not continue there)."""
        if request.get("zip_path"):
            request["tree"] = self._tree_for(str(request["zip_path"]))
        try:
            stdout = tempfile.TemporaryFile(dir=self.workdir)
            stderr = tempfile.TemporaryFile(dir=self.workdir)
            pid = os.fork()
        except OSError as exc:
            self._answer({"id": request["id"], "rc": None, "error": f"cannot fork a module process: {exc}"})
            return None
        if pid == 0:
            self._forget_in_child()
            return _ChildTask(request, stdout, stderr, self.module_path)
        timeout = request.get("timeout")
        deadline = time.monotonic() + timeout if isinstance(timeout, (int, float)) else None
        self.running[pid] = _Running(request["id"], stdout, stderr, deadline)
        return None

    def _tree_for(self, zip_path: str) -> str | None:
        """The zip unpacked once, so that children import from a directory that keeps bytecode.

        Imports from a zip compile every source file in every run (zipimport caches no
        bytecode); from this directory the first child to import a file writes its .pyc and
        later children only read it.  None (run from the zip) when it cannot be made.
        """
        tree = self.workdir / "trees" / Path(zip_path).name
        if tree.is_dir():
            return str(tree)
        try:
            tree.parent.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(dir=tree.parent, prefix=".partial-"))
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(partial)
            os.rename(partial, tree)
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            log.warning("zygote: cannot unpack %s: %s", zip_path, exc)
            return None
        return str(tree)

    def _forget_in_child(self) -> None:
        """Drop the zygote's resources so a module cannot touch the socket or other runs' output."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.sock.close()
        os.close(self.wakeup_read)
        os.close(self.wakeup_write)
        for run in self.running.values():
            run.stdout.close()
            run.stderr.close()
        self.running.clear()

    def _reap(self) -> None:
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.running.pop(pid, None)
            if run is not None:
                self._answer({
                    "id": run.request_id,
                    "rc": os.waitstatus_to_exitcode(status),
                    "stdout": _read_capped(run.stdout),
                    "stderr": _read_capped(run.stderr),
                    "timed_out": run.timed_out,
                })

    def _expire(self) -> None:
        now = time.monotonic()
        for pid, run in self.running.items():
            if run.deadline is not None and now >= run.deadline and not run.timed_out:
                run.timed_out = True
                _kill_group(pid)

    def _wait_time(self) -> float | None:
        if self.backlog and not self.draining:
            return 0
        deadlines = [run.deadline for run in self.running.values() if run.deadline is not None and not run.timed_out]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _answer(self, reply: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # agent gone: the next read sees EOF
            self.sock.sendall(msgpack.packb(reply, use_bin_type=True))

    def _kill_all(self) -> None:
        for pid in self.running:
            _kill_group(pid)


def _on_sigchld(signum: int, frame: object) -> None:
    """Present only so that SIGCHLD reaches the wakeup fd; reaping happens in the loop."""


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _zip_crcs(zip_path: str) -> dict[str, int]:
    with zipfile.ZipFile(zip_path) as archive:
        return {info.filename: info.CRC for info in archive.infolist()}


def _read_capped(handle: IO[bytes]) -> bytes:
    with handle:
        handle.seek(0)
        data = handle.read(MAX_OUTPUT_BYTES + 1)
    if len(data) > MAX_OUTPUT_BYTES:
        return data[:MAX_OUTPUT_BYTES] + b"\n[output truncated]"
    return data


def _run_child(task: _ChildTask) -> None:
    """Become the module, as the AnsiballZ wrapper would, and end when the module exits."""
    try:
        _become_module(task)
    except SystemExit as exit_request:
        _exit_quickly(exit_request.code)
    raise RuntimeError("run_module returned instead of exiting")


def _exit_quickly(code: object) -> None:
    """End the child as SystemExit would, minus the interpreter's teardown.

    Tearing down every module and collecting the heap a forked child shares with the zygote
    costs more than many modules take to run.  Nothing is lost by skipping it: atexit handlers
    (AnsibleModule cleans its temporary directory in one) still run and output is flushed.
    """
    import atexit

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status & 0xFF)


def _become_module(task: _ChildTask) -> None:
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(task.stdout.fileno(), 1)
    os.dup2(task.stderr.fileno(), 2)
    task.stdout.close()
    task.stderr.close()
    request = task.request
    _apply_rlimit_nofile(int(request.get("rlimit_nofile") or 0))
    if request.get("cwd"):
        os.chdir(request["cwd"])
    os.environ.update(request.get("env") or {})
    zip_path = str(request["zip_path"])
    library = str(request.get("tree") or zip_path)
    del sys.argv[1:]
    sys.path[:] = [library, *task.module_path]
    _graft_packages(library)
    loader = importlib.import_module(_LOADER_MODULE)
    loader.run_module(
        json_params=str(request["params"]).encode(),
        profile=request["profile"],
        module_fqn=request["module_fqn"],
        modlib_path=zip_path,
        extensions=request.get("extensions") or {},
    )


def _apply_rlimit_nofile(wanted: int) -> None:
    """The wrapper's rlimit_nofile: raise or lower the soft limit, never above the hard one."""
    if not wanted:
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    requested = min(hard, wanted) if hard != resource.RLIM_INFINITY else wanted
    if requested != soft:
        with contextlib.suppress(ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (requested, hard))


def _graft_packages(library: str) -> None:
    """Look in this run's zip first for anything under the preloaded `ansible` packages.

    The preloaded packages' __path__ point into the zip they were imported from, which holds
    only that first module's module_utils.  Without this, a module_util that only this run's zip
    carries could not be found.  The CRC check guarantees both zips hold the same Ansible code.
    """
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__path__", None)
        if (name == "ansible" or name.startswith("ansible.")) and isinstance(path, list):
            path.insert(0, os.path.join(library, *name.split(".")))


def _load_replay(path: Path) -> list[dict[str, Any]]:
    try:
        backlog = msgpack.unpackb(path.read_bytes(), raw=False)
    finally:
        path.unlink(missing_ok=True)
    return [request for request in backlog if isinstance(request, dict)]


def _reexec(fd: int, workdir: Path, backlog: list[dict[str, Any]]) -> None:
    """Replace this process with a fresh zygote (same pid, same socket), replaying queued requests."""
    handle, replay = tempfile.mkstemp(dir=workdir, prefix="replay-")
    with os.fdopen(handle, "wb") as out:
        out.write(msgpack.packb(backlog, use_bin_type=True))
    os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-c", _BOOTSTRAP, _PACKAGE_ROOT, str(fd), str(workdir), replay])
