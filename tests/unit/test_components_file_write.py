"""FILE and WRITE against the real modules: ansible.builtin.file and ansible.builtin.copy are the reference.

Every case is prepared identically in twin directories.  ansible-core (the one next to the running
interpreter, so each venv checks against its own) applies the module to one twin, the verb (parse
in map form, then execute with a real in-process context) to the other; both are applied a second
time for idempotence.  After each application the outcomes must agree: failed or not, `changed`,
the result data (the module's return values, paths relative to the twin), and the trees (paths,
file types, contents, link counts, modes, owners, symlink targets).

WRITE's reference is ansible-playbook, since the copy action plugin holds half of the behaviour:
one literal task per case with `ignore_errors` and `register`, and a last task writing the
registered results as JSON (`to_json`), which needs no stdout callback (ansible-core ships no
JSON one) and reads the same on 2.19 and 2.21; the cases are split over two playbooks run side
by side, once per application; WRITE's directory sources live in a controller directory both
twins share (SOURCES).  FILE's reference is the file module itself, called through its
debugging entry in forks of a warm interpreter (see FILE_RUNNER), a few cases of which are
checked against ansible-playbook too.  A module costs ansible-playbook half a second of CPU in
a new interpreter, so its modules run in forks of a warm one as well (see WARM_SERVER); the
forked file module costs a few milliseconds.  Tests run as root, so owners are changed to
uid/gid 1 (daemon).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from accelerator import components
from accelerator.components.base import ComponentError
from accelerator.model import JobResult, JobState
from tests.unit.context import LocalContext

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
MODULES = {"FILE": "ansible.builtin.file", "WRITE": "ansible.builtin.copy"}
# Result keys that are Ansible's bookkeeping, not the module's outcome (WRITE's src: see comparable).
NOT_COMPARED = {"failed", "msg", "exception", "diff", "invocation", "warnings", "deprecations", "_ansible_no_log"}
PASSES = 2


# -- how cases prepare their directory ---------------------------------------------------------


def put(d: Path, rel: str, text: str = "old\n", mode: int = 0o644, owner: int | None = None) -> None:
    path = d / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner, owner)


def mkdir(d: Path, rel: str, mode: int = 0o755, group: int | None = None) -> None:
    path = d / rel
    path.mkdir(parents=True, exist_ok=True)
    if group is not None:
        os.chown(path, -1, group)
    path.chmod(mode)


def link(d: Path, rel: str, target: str) -> None:
    os.symlink(target.format(d=d), d / rel)


def steps(*actions: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for action in actions:
            action(d)
    return setup


def tree(d: Path) -> None:
    put(d, "tree/a.txt")
    put(d, "tree/sub/deep/b.txt", mode=0o600)
    mkdir(d, "tree/empty")
    link(d, "tree/sub/l", "../a.txt")


@dataclass(frozen=True)
class Case:
    """args are the module's and the verb's alike; "{d}" is the case's own directory in each twin."""

    name: str
    verb: str
    args: dict[str, Any]
    setup: Callable[[Path], Any] = lambda d: None
    check: bool = False

    def for_root(self, root: Path, ctrl: Path) -> dict[str, Any]:
        d = root / self.name
        return {k: v.format(d=d, ctrl=ctrl) if isinstance(v, str) else v for k, v in self.args.items()}


def F(name: str, setup: Callable[[Path], Any] = lambda d: None, check: bool = False, **args: Any) -> Case:
    return Case(name, "FILE", args, setup, check)


def W(name: str, setup: Callable[[Path], Any] = lambda d: None, check: bool = False, **args: Any) -> Case:
    return Case(name, "WRITE", args, setup, check)


TARGET = steps(lambda d: put(d, "target.txt", "target\n"))

# The controller's directories for WRITE's directory sources ("{ctrl}/NAME"): path -> content, or
# None for an empty directory.
SOURCES: dict[str, dict[str, str | None]] = {
    "conf.d": {"a.conf": "alpha\n", "sub/deep/c.conf": "gamma\n"},
    "one": {"sub/o.txt": "only\n"},
    "empty": {},
    "only-dirs": {"e1/e2": None},
    "mixed": {"m.txt": "mixed\n", "e": None},
}


def source_tree(d: Path, rel: str, name: str, changes: dict[str, str] | None = None) -> None:
    """SOURCES[name] as a copy would leave it at d/rel, with some files' contents changed."""
    mkdir(d, rel)
    for path, text in (SOURCES[name] | (changes or {})).items():
        if text is None:
            mkdir(d, f"{rel}/{path}")
        else:
            put(d, f"{rel}/{path}", text)

CASES = [
    # FILE state=file
    F("file_missing", path="{d}/f", state="file"),
    F("file_mode", lambda d: put(d, "f"), path="{d}/f", state="file", mode="0600"),
    F("file_mode_int", lambda d: put(d, "f", mode=0o600), path="{d}/f", state="file", mode=0o644),
    F("file_owner_id", lambda d: put(d, "f"), path="{d}/f", state="file", owner="1", group="1"),
    F("file_owner_name", lambda d: put(d, "f"), path="{d}/f", owner="daemon", group="daemon", state="file"),
    F("file_unknown_owner", lambda d: put(d, "f"), path="{d}/f", state="file", owner="no-such-user-x"),
    F("file_on_dir", lambda d: mkdir(d, "sub"), path="{d}/sub", state="file"),
    F("file_via_link", steps(TARGET, lambda d: link(d, "l", "target.txt")), path="{d}/l", state="file", mode="0640"),
    F("file_dangling_link", lambda d: link(d, "l", "gone"), path="{d}/l", state="file"),
    F("file_hard_link", steps(TARGET, lambda d: os.link(d / "target.txt", d / "h")), path="{d}/h", state="file", mode="0600"),
    # FILE state=directory
    F("dir_parents", path="{d}/a/b/c", state="directory", mode="0750"),
    F("dir_parents_no_mode", path="{d}/a/b", state="directory"),
    F("dir_parents_owner", path="{d}/a/b", state="directory", owner="1"),
    F("dir_mode_only", lambda d: mkdir(d, "sub"), path="{d}/sub", state="directory", mode="0700"),
    F("dir_same", lambda d: mkdir(d, "sub", 0o700), path="{d}/sub", state="directory", mode="0700"),
    F("dir_on_file", lambda d: put(d, "f"), path="{d}/f", state="directory"),
    F("dir_via_link", steps(lambda d: mkdir(d, "real"), lambda d: link(d, "l", "real")), path="{d}/l", state="directory", mode="0711"),
    F("dir_dangling_link", lambda d: link(d, "l", "{d}/made/here"), path="{d}/l", state="directory"),
    F("dir_setgid_parent", lambda d: mkdir(d, "sg", 0o2775, group=1), path="{d}/sg/x/y", state="directory", mode="0755"),
    # FILE state=touch
    F("touch_new", path="{d}/t", state="touch", mode="0600"),
    F("touch_existing", lambda d: put(d, "t", mode=0o640), path="{d}/t", state="touch"),
    F("touch_dir", lambda d: mkdir(d, "sub"), path="{d}/sub", state="touch"),
    F("touch_no_parent", path="{d}/none/t", state="touch"),
    F("touch_unknown_group", path="{d}/t", state="touch", group="no-such-group-x"),
    # FILE state=absent
    F("absent_missing", path="{d}/nothing", state="absent"),
    F("absent_file", lambda d: put(d, "f"), path="{d}/f", state="absent"),
    F("absent_tree", tree, path="{d}/tree", state="absent"),
    F("absent_link_to_dir", steps(lambda d: mkdir(d, "real"), lambda d: link(d, "l", "real")), path="{d}/l", state="absent"),
    # FILE state=link
    F("link_new", TARGET, path="{d}/l", state="link", src="target.txt"),
    F("link_absolute", TARGET, path="{d}/l", state="link", src="{d}/target.txt"),
    F("link_same", steps(TARGET, lambda d: link(d, "l", "target.txt")), path="{d}/l", state="link", src="target.txt"),
    F("link_changed", steps(TARGET, lambda d: put(d, "other"), lambda d: link(d, "l", "other")),
      path="{d}/l", state="link", src="target.txt"),
    F("link_missing_src", path="{d}/l", state="link", src="nowhere"),
    F("link_over_file", steps(TARGET, lambda d: put(d, "l")), path="{d}/l", state="link", src="target.txt"),
    F("link_over_dir", steps(TARGET, lambda d: mkdir(d, "l")), path="{d}/l", state="link", src="../target.txt"),
    F("link_mode_on_target", TARGET, path="{d}/l", state="link", src="target.txt", mode="0600", owner="1"),
    F("link_into_subdir", steps(lambda d: mkdir(d, "sub"), lambda d: put(d, "sub/t")), path="{d}/sub/l", state="link", src="t"),
    # FILE without state: what the path already is
    F("nostate_dir", lambda d: mkdir(d, "sub"), path="{d}/sub", mode="0700"),
    F("nostate_file", lambda d: put(d, "f"), path="{d}/f", mode="0600"),
    F("nostate_missing", path="{d}/f", mode="0600"),
    F("nostate_link", steps(TARGET, lambda d: link(d, "l", "target.txt")), path="{d}/l", mode="0600"),
    F("nostate_dangling", lambda d: link(d, "l", "gone"), path="{d}/l", mode="0600"),
    F("nostate_hard", steps(TARGET, lambda d: os.link(d / "target.txt", d / "h")), path="{d}/h", mode="0640"),
    # FILE in check mode
    F("check_dir_new", path="{d}/a/b", state="directory", mode="0700", check=True),
    F("check_file_mode", lambda d: put(d, "f"), path="{d}/f", state="file", mode="0600", check=True),
    F("check_absent_file", lambda d: put(d, "f"), path="{d}/f", state="absent", check=True),
    F("check_touch_new", path="{d}/t", state="touch", check=True),
    F("check_link_new", TARGET, path="{d}/l", state="link", src="target.txt", check=True),
    F("check_link_changed", steps(TARGET, lambda d: put(d, "other"), lambda d: link(d, "l", "other")),
      path="{d}/l", state="link", src="target.txt", mode="0600", check=True),
    # WRITE (ansible.builtin.copy)
    W("write_new", dest="{d}/x.conf", content="port = 80\n"),
    W("write_new_mode", dest="{d}/x.conf", content="port = 80\n", mode="0600"),
    W("write_same", lambda d: put(d, "x.conf", "port = 80\n", 0o600), dest="{d}/x.conf", content="port = 80\n"),
    W("write_differs_keeps_mode", lambda d: put(d, "x.conf", mode=0o600), dest="{d}/x.conf", content="port = 80\n"),
    W("write_differs_sets_mode", lambda d: put(d, "x.conf", mode=0o600), dest="{d}/x.conf", content="new\n", mode="0644"),
    W("write_same_mode_only", lambda d: put(d, "x.conf", "same\n", 0o600), dest="{d}/x.conf", content="same\n", mode=0o640),
    W("write_keeps_owner", lambda d: put(d, "x.conf", owner=1), dest="{d}/x.conf", content="new\n"),
    W("write_owner_id", dest="{d}/x.conf", content="new\n", owner="1", group="1", mode="0640"),
    W("write_unknown_owner", dest="{d}/x.conf", content="new\n", owner="no-such-user-x", mode="0600"),
    W("write_force_false", lambda d: put(d, "x.conf", mode=0o600), dest="{d}/x.conf", content="new\n", force=False, mode="0644"),
    W("write_no_parent", dest="{d}/none/x.conf", content="new\n"),
    W("write_dir_content", lambda d: mkdir(d, "etc"), dest="{d}/etc", content="new\n"),
    W("write_src_into_dir", lambda d: mkdir(d, "etc"), dest="{d}/etc", src="{ctrl}/a.conf", mode="0600"),
    W("write_src_into_dir_same", steps(lambda d: mkdir(d, "etc"), lambda d: put(d, "etc/a.conf", "from the controller\n")),
      dest="{d}/etc", src="{ctrl}/a.conf"),
    W("write_over_link", steps(TARGET, lambda d: link(d, "x.conf", "target.txt")), dest="{d}/x.conf", content="target\n"),
    W("write_link_to_dir_src", steps(lambda d: mkdir(d, "real"), lambda d: link(d, "l", "real")), dest="{d}/l", src="{ctrl}/a.conf"),
    W("write_hard_same", steps(lambda d: put(d, "x.conf", "same\n"), lambda d: os.link(d / "x.conf", d / "h")),
      dest="{d}/x.conf", content="same\n", mode="0600"),
    W("write_setgid_dir", lambda d: mkdir(d, "sg", 0o2775, group=1), dest="{d}/sg/x.conf", content="new\n"),
    W("check_write_same_mode", lambda d: put(d, "x.conf", "same\n"), dest="{d}/x.conf", content="same\n", mode="0600", check=True),
    W("check_write_no_parent", dest="{d}/none/x.conf", content="new\n", check=True),
    W("write_file_dest_slash", dest="{d}/new/", src="{ctrl}/a.conf", directory_mode="0700", mode="0600"),
    # WRITE: non-string content, written as the copy action writes it
    W("content_int", lambda d: put(d, "x", "50"), dest="{d}/x", content=50),
    W("content_bool", dest="{d}/x", content=True),
    W("content_dict", dest="{d}/x", content={"a": [1, "é"], "b": None}),
    W("content_list", lambda d: put(d, "x", "[1, null, 2.5]"), dest="{d}/x", content=[1, None, 2.5]),
    # WRITE: validate (run without a shell on the new content; never when the content matches)
    W("validate_fail", lambda d: put(d, "x.conf"), dest="{d}/x.conf", content="new\n", validate="/bin/grep -q port %s"),
    W("validate_unchanged", lambda d: put(d, "x.conf", "same\n"), dest="{d}/x.conf", content="same\n", mode="0600",
      validate="/bin/false %s"),
    W("validate_no_percent", dest="{d}/x.conf", content="new\n", validate="/bin/true"),
    W("validate_no_percent_same", lambda d: put(d, "x.conf", "same\n"), dest="{d}/x.conf", content="same\n", validate="/bin/true"),
    W("validate_sees_suffix_and_mode", dest="{d}/x.conf", content="new\n", mode="0600", owner="1",
      validate="""/bin/sh -c 'case $0 in *.conf) test -n "$(find "$0" -perm 0600 -uid 1)";; *) exit 1;; esac' %s"""),
    W("validate_fail_over_link", steps(TARGET, lambda d: link(d, "x.conf", "target.txt")), dest="{d}/x.conf", content="target\n",
      validate="/bin/false %s"),
    W("validate_no_command", dest="{d}/x.conf", content="new\n", validate="/no/such/validator %s"),
    # WRITE: directory sources (see SOURCES)
    W("dir_slash_new", dest="{d}/out", src="{ctrl}/conf.d/", directory_mode="0750", mode="0600", owner="1", group="1"),
    W("dir_noslash_new", dest="{d}/out", src="{ctrl}/conf.d", validate="/bin/grep -q a %s"),
    W("dir_dest_slash", steps(TARGET, lambda d: mkdir(d, "out", 0o700), lambda d: link(d, "out/a.conf", "../target.txt")),
      dest="{d}/out/", src="{ctrl}/conf.d/", mode="0644", directory_mode="0755"),
    # an existing subdirectory that receives files: 2.19's action gives it directory_mode and owner, 2.21's leaves it
    W("dir_slash_existing", steps(lambda d: mkdir(d, "out/sub", 0o700), lambda d: mkdir(d, "out", 0o700),
                                  lambda d: put(d, "out/a.conf", mode=0o640)),
      dest="{d}/out", src="{ctrl}/conf.d/", directory_mode="0750", owner="1"),
    W("dir_noslash_existing", steps(lambda d: mkdir(d, "out/conf.d/sub", 0o700)), dest="{d}/out", src="{ctrl}/conf.d",
      directory_mode="0750"),
    W("dir_one_changed", lambda d: source_tree(d, "out", "conf.d", {"sub/deep/c.conf": "changed\n"}), dest="{d}/out", src="{ctrl}/conf.d/"),
    W("dir_force_false", lambda d: put(d, "out/a.conf", mode=0o600), dest="{d}/out", src="{ctrl}/conf.d/", force=False, mode="0644"),
    # one file below a subdirectory: 2.19 registers the directory's result (changed false), 2.21 the file's
    W("dir_one_file", dest="{d}/out", src="{ctrl}/one"),
    W("dir_one_file_slash", lambda d: source_tree(d, "out", "one"), dest="{d}/out", src="{ctrl}/one/", mode="0600"),
    W("dir_empty", dest="{d}/out", src="{ctrl}/empty"),
    W("dir_only_dirs", dest="{d}/out", src="{ctrl}/only-dirs", directory_mode="0701"),
    W("dir_mixed_existing", lambda d: mkdir(d, "out/e", 0o700), dest="{d}/out", src="{ctrl}/mixed/", directory_mode="0750"),
    W("check_dir", lambda d: source_tree(d, "out", "conf.d", {"a.conf": "changed\n"}), dest="{d}/out", src="{ctrl}/conf.d/",
      directory_mode="0700", mode="0600", check=True),
]


# -- running both sides ------------------------------------------------------------------------

# ansible.builtin.file's reference: the module itself, through its documented debugging entry
# (`python -m ansible.modules.file '{"ANSIBLE_MODULE_ARGS": ...}'`, legacy profile), each call in a
# fork of one interpreter that has imported it: the same module code as under ansible-playbook, at a
# few milliseconds a call instead of a second.  file's controller side is the generic action, which
# only passes the arguments and check mode; CROSS_CHECKED cases also run under ansible-playbook, on
# a third twin, to show both references agree.
FILE_RUNNER = r"""
import json, os, sys, tempfile
import ansible.module_utils.basic as basic
import ansible.modules.file as module
results = []
for job in json.load(sys.stdin):
    fd, out = tempfile.mkstemp()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.dup2(fd, 1)
            basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": job}).encode()
            basic._ANSIBLE_PROFILE = "legacy"
            module.main()
        except SystemExit as exc:
            code = exc.code or 0
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.waitpid(pid, 0)
    os.close(fd)
    with open(out) as text:
        results.append(json.loads(text.read()))
    os.unlink(out)
json.dump(results, sys.stdout)
"""
CROSS_CHECKED = ("dir_parents", "check_absent_file")


def file_module_apply(cases: list[Case], root: Path, ctrl: Path) -> dict[str, dict[str, Any]]:
    jobs = [case.for_root(root, ctrl) | ({"_ansible_check_mode": True} if case.check else {}) for case in cases]
    proc = subprocess.run(
        [sys.executable, "-c", FILE_RUNNER], input=json.dumps(jobs), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(zip([case.name for case in cases], json.loads(proc.stdout)))


def playbook(cases: list[Case], root: Path, ctrl: Path, out: Path) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for index, case in enumerate(cases):
        task: dict[str, Any] = {
            "name": case.name, MODULES[case.verb]: case.for_root(root, ctrl),
            "register": f"r{index}", "ignore_errors": True,
        }
        if case.check:
            task["check_mode"] = True
        tasks.append(task)
    everything = "{" + ", ".join(f"'{case.name}': r{index}" for index, case in enumerate(cases)) + "}"
    tasks.append({"name": "results", "ansible.builtin.copy": {"dest": str(out), "content": "{{ " + everything + " | to_json }}"}})
    return [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]


# ansible-playbook runs each module as `INTERPRETER AnsiballZ_x.py`, a new Python process that
# compiles ansible.module_utils afresh from the payload's zip: most of the half second a module
# costs.  WARM_CLIENT, given to ansible-playbook as its Python, hands the script, its arguments,
# environment, working directory, umask and standard streams to WARM_SERVER, which has imported
# module_utils from this installation once and runs each script in a fork of itself.  The module
# code is the same (the zip is built from these very files); only where it is imported from
# differs.  REFERENCE_COLD=1 runs the real interpreter instead.
WARM_SERVER = r"""
import json, os, runpy, selectors, socket, sys, traceback
import ansible.module_utils.basic, ansible.module_utils.common.json, ansible.module_utils.common.text.converters
try:
    import ansible.module_utils._internal._ansiballz._loader  # 2.19+
except ImportError:
    pass

def child(request, fds):
    code = 70
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = request["argv"]
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(64)
selector = selectors.DefaultSelector()
selector.register(server, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        if key.fileobj is server:
            conn, _ = server.accept()
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
            while chunk := conn.recv(1 << 16):
                data += chunk
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                child(json.loads(data), fds)
            for fd in fds:
                os.close(fd)
            selector.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, conn))
        else:
            pid, conn = key.data
            selector.unregister(key.fileobj)
            os.close(key.fileobj)
            _, status = os.waitpid(pid, 0)
            conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
            conn.close()
"""
WARM_CLIENT = """#!{python} -IS
import json, os, socket, sys
if len(sys.argv) != 2 or not os.path.isfile(sys.argv[1]):
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
mask = os.umask(0)
os.umask(mask)
request = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ), "umask": mask}}
client = socket.socket(socket.AF_UNIX)
client.connect({socket!r})
socket.send_fds(client, [json.dumps(request).encode()], [0, 1, 2])
client.shutdown(socket.SHUT_WR)
reply = b""
while chunk := client.recv(64):
    reply += chunk
sys.exit(int(reply or b"70"))
"""


@contextlib.contextmanager
def module_interpreter(work: Path) -> Iterator[str]:
    """The Python that ansible-playbook runs modules with: WARM_CLIENT, or sys.executable when cold."""
    if os.environ.get("REFERENCE_COLD") == "1":
        yield sys.executable
        return
    work.mkdir(parents=True, exist_ok=True)
    sockets = Path(tempfile.mkdtemp(prefix="warm-"))  # short: a socket path has at most 107 bytes
    sock = sockets / "modules.sock"
    server = subprocess.Popen([sys.executable, "-c", WARM_SERVER, str(sock)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n", "the warm module server did not start"
        client = work / "warm-python"
        client.write_text(WARM_CLIENT.format(python=sys.executable, socket=str(sock)))
        client.chmod(0o755)
        yield str(client)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(sockets, ignore_errors=True)


def ansible_apply(cases: list[Case], roots: list[Path], ctrl: Path, work: Path, label: str,
                  interpreter: str = sys.executable) -> dict[str, dict[str, Any]]:
    """One ansible-playbook run applying each case once (cases[i] in roots[i]); their registered results."""
    work.mkdir(parents=True, exist_ok=True)
    book, out = work / f"{label}.json", work / f"{label}.results.json"
    plays = playbook(cases, roots[0], ctrl, out)
    for task, case, root in zip(plays[0]["tasks"], cases, roots):
        task[MODULES[case.verb]] = case.for_root(root, ctrl)
    book.write_text(json.dumps(plays))
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(work / "home"), "ANSIBLE_LOCAL_TEMP": str(work / "local"),
        "ANSIBLE_REMOTE_TEMP": str(work / "remote"), "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False", "ANSIBLE_CONFIG": str(work / "none.cfg"),
    }
    command = [
        sys.executable, str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local",
        "-e", f"ansible_python_interpreter={interpreter}", str(book),
    ]
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not out.exists():
        raise AssertionError(f"ansible-playbook failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def verb_apply(case: Case, root: Path, ctrl: Path) -> dict[str, Any]:
    """Parse in map form and execute, as the converter's job would run on an agent."""
    ctx = LocalContext(allowed_roots=(root,), state_dir=root.parent / "state")
    component = components.get(case.verb)
    parsed = component.parse(case.for_root(root, ctrl) | ({"check": True} if case.check else {}), ctrl)
    ctx.add_uploads(parsed)
    result = component.execute(parsed.args, ctx)
    assert result.state in (JobState.SUCCESS, JobState.FAILED)
    assert result.changed == bool(result.data.get("changed")) or not result.ok
    return {"failed": not result.ok, "changed": result.changed, "data": result.data, "error": result.error}


def snapshot(d: Path, root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything below d that the module may have touched; times left out (touch changes them)."""
    entries: dict[str, tuple[Any, ...]] = {}
    for path in [d, *sorted(d.rglob("*"))]:
        info = path.lstat()
        rel = str(path.relative_to(d))
        owner = (info.st_uid, info.st_gid)
        if stat.S_ISLNK(info.st_mode):
            entries[rel] = ("link", os.readlink(path).replace(str(root), "<root>"), owner)
        elif stat.S_ISDIR(info.st_mode):
            entries[rel] = ("dir", oct(stat.S_IMODE(info.st_mode)), owner)
        else:
            entries[rel] = ("file", oct(stat.S_IMODE(info.st_mode)), owner, info.st_nlink, path.read_bytes())
    return entries


def normalised(value: Any, root: Path) -> Any:
    if isinstance(value, str):
        return value.replace(str(root), "<root>")
    if isinstance(value, dict):
        return {k: normalised(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [normalised(v, root) for v in value]
    return value


def comparable(case: Case, data: dict[str, Any], root: Path, ref: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result keys to compare.  WRITE's src is compared only where Ansible reports the controller's
    path (a directory source, or a file force=false kept), not its temporary file on the target."""
    ref = data if ref is None else ref
    temporary = case.verb == "WRITE" and not str(ref.get("src", "")).startswith(str(root.parent / "ctrl"))
    skip = NOT_COMPARED | ({"src"} if temporary else set())
    return {k: normalised(v, root) for k, v in data.items() if k not in skip}


@dataclass
class Outcome:
    ref: list[dict[str, Any]] = field(default_factory=list)
    ours: list[dict[str, Any]] = field(default_factory=list)
    ref_trees: list[dict[str, Any]] = field(default_factory=list)
    our_trees: list[dict[str, Any]] = field(default_factory=list)
    cross: list[dict[str, Any]] = field(default_factory=list)  # ansible-playbook's, for CROSS_CHECKED cases
    cross_trees: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"no ansible-playbook next to {sys.executable}")
    base = tmp_path_factory.mktemp("twins")
    # three twins with names of one length, so that absolute link targets have the same size
    ref_root, our_root, cross_root, ctrl = base / "ref", base / "our", base / "ans", base / "ctrl"
    put(ctrl, "a.conf", "from the controller\n")
    for name in SOURCES:
        source_tree(ctrl, name, name)
    cross = [case for case in CASES if case.name in CROSS_CHECKED]
    for root, cases in ((ref_root, CASES), (our_root, CASES), (cross_root, cross)):
        for case in cases:
            mkdir(root, case.name)
            case.setup(root / case.name)
    results = {case.name: Outcome() for case in CASES}
    file_cases = [case for case in CASES if case.verb == "FILE"]
    by_playbook = [(case, ref_root) for case in CASES if case.verb == "WRITE"] + [(case, cross_root) for case in cross]
    initial = {(case.name, root): snapshot(root / case.name, root) for case, root in by_playbook}

    def registered(case: Case, root: Path) -> list[dict[str, Any]]:
        return results[case.name].ref if root == ref_root else results[case.name].cross

    def trees(case: Case, root: Path) -> list[dict[str, Any]]:
        return results[case.name].ref_trees if root == ref_root else results[case.name].cross_trees

    started = time.monotonic()
    with module_interpreter(base / "work") as interpreter, ThreadPoolExecutor(max_workers=2) as pool:
        for run in range(PASSES):
            # A module's outcome depends on its arguments and the files only: where the first
            # application left the files as they were, the second is the same call, and its
            # registered result is reused rather than paid for again (a second a task).
            todo = [(c, r) for c, r in by_playbook if run == 0 or trees(c, r)[-1] != initial[(c.name, r)]]
            halves = [half for half in (todo[0::2], todo[1::2]) if half]
            pending = [
                pool.submit(ansible_apply, [c for c, _ in half], [r for _, r in half], ctrl, base / "work", f"pass{run}-{i}",
                            interpreter)
                for i, half in enumerate(halves)
            ]
            for name, returned in file_module_apply(file_cases, ref_root, ctrl).items():
                results[name].ref.append(returned)
            for case in CASES:
                results[case.name].ours.append(verb_apply(case, our_root, ctrl))
                results[case.name].our_trees.append(snapshot(our_root / case.name, our_root))
            for future, half in zip(pending, halves):
                returned_by_name = future.result()
                for case, root in half:
                    registered(case, root).append(returned_by_name[case.name])
            for case, root in by_playbook:
                if (case, root) not in todo:
                    registered(case, root).append(registered(case, root)[-1])
            for case in CASES:
                results[case.name].ref_trees.append(snapshot(ref_root / case.name, ref_root))
            for case in cross:
                results[case.name].cross_trees.append(snapshot(cross_root / case.name, cross_root))
    print(f"reference and verb runs: {time.monotonic() - started:.1f}s")
    return {"results": results, "ref_root": ref_root, "our_root": our_root, "cross_root": cross_root}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_matches_the_module(case: Case, outcomes: dict[str, Any]) -> None:
    outcome: Outcome = outcomes["results"][case.name]
    ref_root, our_root = outcomes["ref_root"], outcomes["our_root"]
    for run in range(PASSES):
        ref, ours = outcome.ref[run], outcome.ours[run]
        where = f"{case.name}, application {run + 1}"
        assert ours["failed"] == bool(ref.get("failed")), f"{where}: ansible {ref}, verb {ours}"
        assert outcome.our_trees[run] == outcome.ref_trees[run], f"{where}: trees differ"
        if ref.get("failed"):
            assert case.verb in ours["error"], ours["error"]
            assert str(our_root / case.name) in ours["error"], ours["error"]
            continue
        assert ours["changed"] == ref["changed"], f"{where}: changed: ansible {ref}, verb {ours}"
        assert comparable(case, ours["data"], our_root, ref) == comparable(case, ref, ref_root), where


@pytest.mark.parametrize("name", CROSS_CHECKED)
def test_the_file_reference_agrees_with_ansible_playbook(name: str, outcomes: dict[str, Any]) -> None:
    """The forked module runs and ansible-playbook give the same results and trees."""
    outcome: Outcome = outcomes["results"][name]
    case = next(case for case in CASES if case.name == name)
    for run in range(PASSES):
        assert outcome.cross_trees[run] == outcome.ref_trees[run]
        assert comparable(case, outcome.cross[run], outcomes["cross_root"]) == comparable(
            case, outcome.ref[run], outcomes["ref_root"]
        )
        assert outcome.cross[run]["changed"] == outcome.ref[run]["changed"]


# -- parse: what is outside the subset ---------------------------------------------------------


def parse(verb: str, spec: dict[str, Any] | str, base_dir: Path = Path(".")) -> dict[str, Any]:
    return components.get(verb).parse(spec, base_dir).args


def test_modes_read_as_ansible_reads_them() -> None:
    assert parse("FILE", {"path": "/srv/x", "mode": 0o644})["mode"] == 0o644  # YAML 0644 is 420
    assert parse("FILE", {"path": "/srv/x", "mode": 420})["mode"] == 0o644
    assert parse("FILE", {"path": "/srv/x", "mode": "0644"})["mode"] == 0o644
    assert parse("FILE", {"path": "/srv/x", "mode": "644"})["mode"] == 0o644
    assert parse("FILE", {"path": "/srv/x", "mode": "420"})["mode"] == 0o420  # a string is octal, as in Ansible
    assert parse("WRITE", {"dest": "/srv/x", "content": "-x\n", "mode": "2755"})["mode"] == 0o2755
    assert parse("FILE", "--path /srv/x --state directory --mode 0750 --check")["check"] is True


@pytest.mark.parametrize(("verb", "spec", "words"), [
    ("FILE", {"path": "/srv/x", "mode": "u+x"}, ["FILE", "mode", "u+x"]),
    ("FILE", {"path": "/srv/x", "mode": "preserve"}, ["FILE", "mode"]),
    ("FILE", {"path": "/srv/x", "mode": 0o17777}, ["FILE", "mode", "range"]),
    ("FILE", {"path": "/srv/x", "mode": True}, ["FILE", "mode"]),
    ("FILE", {"path": "/srv/x", "recurse": True}, ["FILE", "unknown field", "recurse"]),
    ("FILE", {"path": "/srv/x", "state": "link", "src": "y", "force": True}, ["FILE", "unknown field", "force"]),
    ("FILE", {"path": "/srv/x", "state": "hard", "src": "/y"}, ["FILE", "state", "hard"]),
    ("FILE", {"path": "srv/x", "state": "directory"}, ["FILE", "path", "absolute"]),
    ("FILE", {"path": "/srv/../etc", "state": "directory"}, ["FILE", "path", "normalised"]),
    ("FILE", {"path": "/srv/x/", "state": "directory"}, ["FILE", "path", "normalised"]),
    ("FILE", {"path": "~/x"}, ["FILE", "path"]),
    ("FILE", {"path": "/srv/$HOME"}, ["FILE", "path", "$"]),
    ("FILE", {"state": "directory"}, ["FILE", "--path"]),
    ("FILE", {"path": "/srv/x", "state": "link"}, ["FILE", "src", "link"]),
    ("FILE", {"path": "/srv/x", "state": "file", "src": "/y"}, ["FILE", "src"]),
    ("FILE", {"path": "/srv/x", "owner": "+1"}, ["FILE", "owner"]),
    ("FILE", {"path": "/srv/x", "owner": ""}, ["FILE", "owner"]),
    ("FILE", {"path": "/srv/x", "check": "maybe"}, ["FILE", "check"]),
    ("WRITE", {"dest": "/srv/x"}, ["WRITE", "content", "src"]),
    ("WRITE", {"dest": "/srv/x", "content": "a", "src": "b"}, ["WRITE", "content", "src"]),
    ("WRITE", {"dest": "/srv/x/", "content": "a"}, ["WRITE", "dest", "content with a dir"]),
    ("WRITE", {"dest": "/srv/x", "content": None}, ["WRITE", "content", "src"]),
    ("WRITE", {"dest": "/srv/x", "content": {"a": {1, 2}}}, ["WRITE", "content", "JSON"]),
    ("WRITE", {"dest": "/srv/x", "content": "a", "directory_mode": "u+rwx"}, ["WRITE", "mode", "u+rwx"]),
    ("WRITE", {"dest": "/srv/x", "content": "a", "validate": ["x", "%s"]}, ["WRITE", "validate", "string"]),
    ("WRITE", {"dest": "/srv/x//", "src": "."}, ["WRITE", "dest", "normalised"]),
    ("WRITE", {"dest": "/srv/x", "src": ""}, ["WRITE", "src", "empty"]),
    ("WRITE", {"dest": "/srv/x", "src": "."}, ["WRITE", "src", "'.'"]),
    ("WRITE", {"dest": "x", "content": "a"}, ["WRITE", "dest", "absolute"]),
    ("WRITE", {"dest": "/srv/x", "content": "a", "mode": "preserve"}, ["WRITE", "mode"]),
    ("WRITE", {"dest": "/srv/x", "content": "a", "backup": True}, ["WRITE", "unknown field", "backup"]),
    ("WRITE", {"dest": "/srv/x", "src": "no/such/file"}, ["WRITE", "src", "no/such/file"]),
    ("WRITE", {"dest": "/srv/x", "content": "a", "force": "sometimes"}, ["WRITE", "force"]),
])
def test_outside_the_subset_is_refused(verb: str, spec: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ComponentError) as caught:
        parse(verb, spec)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_write_src_is_uploaded(tmp_path: Path) -> None:
    put(tmp_path, "files/a.conf", "a\n")
    parsed = components.get("WRITE").parse({"dest": "/srv/a.conf", "src": "files/a.conf"}, tmp_path)
    assert list(parsed.uploads.values()) == [tmp_path / "files" / "a.conf"]
    (entry,) = parsed.args["files"]
    assert entry["sha256"] in parsed.uploads
    assert (entry["path"], entry["size"], entry["mode"]) == ("a.conf", 2, 0o644)
    assert parsed.args["source"] == str(tmp_path / "files" / "a.conf")
    assert (parsed.args["slash"], parsed.args["directories"]) == (False, [])
    with pytest.raises(ComponentError, match="WRITE: src 'files/missing'"):
        parse("WRITE", {"dest": "/srv/a.conf", "src": "files/missing"}, tmp_path)
    with pytest.raises(ComponentError, match="WRITE: src 'files/a.conf/'"):
        parse("WRITE", {"dest": "/srv/a.conf", "src": "files/a.conf/"}, tmp_path)


def test_write_directory_source_is_walked_as_the_action_walks_it(tmp_path: Path) -> None:
    """Every file (relative to what dest receives) is uploaded; symlinks are followed; the order is
    os.walk's: a level's files, then its subdirectories, then the levels below."""
    put(tmp_path, "files/d/z.conf", "z\n", mode=0o600)
    put(tmp_path, "files/d/b/deep/x", "x\n")
    put(tmp_path, "files/d/a/y", "y\n")
    mkdir(tmp_path, "files/d/c")
    put(tmp_path, "files/elsewhere/w", "w\n")
    link(tmp_path, "files/d/l.conf", "z.conf")
    link(tmp_path, "files/d/linked", "{d}/files/elsewhere")
    spec = {"dest": "/srv/conf", "src": "files/d/", "directory_mode": 0o750}
    args = parse("WRITE", spec, tmp_path)
    assert [(f["path"], f["size"], f["mode"]) for f in args["files"]] == [
        ("l.conf", 2, 0o600), ("z.conf", 2, 0o600), ("linked/w", 2, 0o644), ("a/y", 2, 0o644), ("b/deep/x", 2, 0o644),
    ]
    assert args["directories"] == ["a", "b", "c", "linked", "b/deep"]
    assert (args["dest"], args["slash"], args["directory_mode"]) == ("/srv/conf", True, 0o750)
    assert args["source"] == f"{tmp_path}/files/d/"
    without_slash = parse("WRITE", spec | {"src": "files/d", "dest": "/srv/conf/"}, tmp_path)
    assert [f["path"] for f in without_slash["files"]][:2] == ["d/l.conf", "d/z.conf"]
    assert without_slash["directories"][0] == "d/a" and without_slash["dest"] == "/srv/conf"
    parsed = components.get("WRITE").parse(spec, tmp_path)
    assert set(parsed.uploads) == {f["sha256"] for f in args["files"]}
    assert parsed.uploads[args["files"][0]["sha256"]] == tmp_path / "files" / "d" / "z.conf"
    assert parse("WRITE", {"dest": "/srv/conf", "src": "files/d/c"}, tmp_path)["files"] == []
    link(tmp_path, "files/d/b/loop", "..")
    with pytest.raises(ComponentError, match="loop is a symlink to a directory it is in"):
        parse("WRITE", spec, tmp_path)
    os.unlink(tmp_path / "files" / "d" / "b" / "loop")
    link(tmp_path, "files/d/gone", "nowhere")
    with pytest.raises(ComponentError, match="gone is a symlink to no file"):
        parse("WRITE", spec, tmp_path)


@pytest.mark.parametrize(("content", "text"), [
    (50, "50"), (True, "True"), (False, "False"), (1.5, "1.5"), ("50", "50"),
    ({"a": [1, "é"], "b": None}, '{"a": [1, "\\u00e9"], "b": null}'), ([1, None, 2.5], "[1, null, 2.5]"), ([], "[]"),
])
def test_content_that_is_not_a_string_is_written_as_the_action_writes_it(content: Any, text: str) -> None:
    assert parse("WRITE", {"dest": "/srv/x", "content": content})["content"] == text


def test_which_directories_get_the_file_module_follows_the_controllers_ansible() -> None:
    """2.19's copy action runs the file module on every source directory, 2.21's (and later 2.20's)
    only on those no copied file is in; the cases above check what each does."""
    from ansible.release import __version__

    from accelerator.components.write import action_copies_every_directory
    version = tuple(int(part) for part in __version__.split(".")[:2])
    if version != (2, 20):
        assert action_copies_every_directory() is (version < (2, 20))


# -- execute: the allowed roots ----------------------------------------------------------------


def execute(verb: str, spec: dict[str, Any], root: Path) -> JobResult:
    ctx = LocalContext(allowed_roots=(root,), state_dir=root / "state")
    component = components.get(verb)
    parsed = component.parse(spec, root)
    ctx.add_uploads(parsed)
    return component.execute(parsed.args, ctx)


def test_paths_outside_the_allowed_roots_fail(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    mkdir(tmp_path, "root")
    mkdir(tmp_path, "outside")
    put(outside, "secret", mode=0o600)
    os.symlink(outside, root / "escape")
    os.symlink(outside / "secret", root / "secret-link")
    failures = [
        execute("FILE", {"path": str(outside / "x"), "state": "directory"}, root),
        execute("FILE", {"path": str(root / "escape" / "x"), "state": "directory"}, root),
        execute("FILE", {"path": str(root / "secret-link"), "state": "file", "mode": "0644"}, root),
        execute("FILE", {"path": str(root / "secret-link"), "state": "link", "src": "/etc/hostname", "mode": "0644"}, root),
        execute("FILE", {"path": str(root), "state": "absent"}, root),
        execute("WRITE", {"dest": str(root / "escape" / "x"), "content": "x"}, root),
        execute("WRITE", {"dest": str(root / "escape"), "src": str(outside / "secret")}, root),
    ]
    for result in failures:
        assert result.state is JobState.FAILED
        assert result.error.startswith(("FILE: refusing", "WRITE: refusing")), result.error
        assert "not below an allowed root" in result.error
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert stat.S_IMODE((outside / "secret").stat().st_mode) == 0o600
    assert root.exists()
    # the link itself is below the root: removing or replacing it is allowed, its target is left alone
    assert execute("FILE", {"path": str(root / "secret-link"), "state": "absent"}, root).ok
    assert (outside / "secret").exists()


def test_failures_name_the_verb_and_the_path(tmp_path: Path) -> None:
    result = execute("FILE", {"path": str(tmp_path / "missing"), "state": "file"}, tmp_path)
    assert result.state is JobState.FAILED
    assert result.error == f"FILE: file ({tmp_path / 'missing'}) is absent, cannot continue"
    assert result.stderr == result.error
    result = execute("WRITE", {"dest": str(tmp_path / "none" / "x"), "content": "x"}, tmp_path)
    assert result.error == f"WRITE: Destination directory {tmp_path / 'none'} does not exist (path: {tmp_path / 'none' / 'x'})"


def test_validate_failures_carry_the_modules_keys(tmp_path: Path) -> None:
    put(tmp_path, "x.conf", "old\n")
    spec = {"dest": str(tmp_path / "x.conf"), "content": "new\n"}
    result = execute("WRITE", spec | {"validate": "/bin/sh -c 'echo out; echo err >&2; exit 3' %s"}, tmp_path)
    assert result.state is JobState.FAILED
    assert result.error == f"WRITE: failed to validate (path: {tmp_path / 'x.conf'})"
    assert (result.data["exit_status"], result.data["stdout"], result.data["stderr"]) == (3, "out\n", "err\n")
    result = execute("WRITE", spec | {"validate": "/bin/true"}, tmp_path)
    assert result.error.startswith("WRITE: validate must contain %s: /bin/true")
    result = execute("WRITE", spec | {"validate": "/no/such/validator %s"}, tmp_path)
    assert result.error.startswith("WRITE: Error executing command.")
    assert (tmp_path / "x.conf").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.conf"]  # no temporary file left behind
    assert execute("WRITE", spec | {"validate": "/bin/grep -qx new %s"}, tmp_path).ok
    assert (tmp_path / "x.conf").read_text() == "new\n"
