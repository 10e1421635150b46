"""Run one playbook with stock Ansible and with ours, and reduce both runs to what must be equal.

Each run gets its own file root (`-e root=...`): the loopback hosts are one machine with one
login user, so playbooks write only below `{{ root }}/{{ inventory_hostname }}`.  What is
compared: the exit code, the recap, each host's sequence of task results (status and the result
itself, minus what differs between any two runs: timings, temporary paths, job ids, inode
numbers), and the files left under the root (type, mode, content).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
CALLBACKS = Path(__file__).resolve().parent / "callback_plugins"
RUN_TIMEOUT = 300

# Keys whose values differ between any two runs of the same playbook, stock or not.
VOLATILE_KEYS = frozenset({
    "start", "end", "delta", "mtime", "atime", "ctime", "inode", "ansible_job_id", "results_file",
    "_ansible_no_log", "_ansible_verbose_always", "_ansible_verbose_override", "attempts_time",
    "_original_basename",  # copy content=: the name of a random local temporary file
})
# In a stat result: the inode's generation number, random for every new file.
VOLATILE_STAT_KEYS = frozenset({"version"})
_TMP_PATH = re.compile(r"/[^\s'\"]*?/\.ansible/tmp/ansible-(?:local|tmp)-[^/\s'\"]+(?:/[^\s'\"]*)?")
_JOB_ID = re.compile(r"j\d{6,}\.\d+")
_BACKUP_STAMP = re.compile(r"\.\d+\.\d{4}-\d{2}-\d{2}@\d{2}:\d{2}:\d{2}~")


@dataclass
class Run:
    rc: int
    output: str
    recap: dict[str, Any]
    per_host: dict[str, list[dict[str, Any]]]
    files: dict[str, Any]


@dataclass
class Case:
    playbook: str
    strategy: str = "linear"
    args: list[str] = field(default_factory=list)
    # "strategy": ours = our strategy; "connection": ours = the stock strategy with our
    # connection plugin as every host's ansible_connection.
    mode: str = "strategy"
    # What stock ansible-playbook must exit with: a case that fails by accident (a typo, a
    # permission problem) would otherwise "match" by failing the same way in both runs.
    stock_rc: int = 0
    env: dict[str, str] = field(default_factory=dict)  # for both runs

    @property
    def id(self) -> str:
        suffix = "" if self.strategy == "linear" else f"-{self.strategy}"
        # extra arguments name the case too: ["--tags", "x"] -> "-tags-x"
        extra = "".join(f"-{arg.lstrip('-')}" for arg in self.args)
        return Path(self.playbook).stem + suffix + extra + ("" if self.mode == "strategy" else f"-{self.mode}")


def ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    return str(beside) if beside.exists() else "ansible-playbook"


def run_playbook(case: Case, inventory: Path, root: Path, work: Path, accelerated: bool,
                 extra_env: dict[str, str]) -> Run:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o777)  # the login user writes here
    record = work / f"record-{'ours' if accelerated else 'stock'}.json"
    strategy = f"directord.accelerator.{case.strategy}" if accelerated and case.mode == "strategy" else case.strategy
    connection = ["-e", "ansible_connection=directord.accelerator.agent"] if accelerated and case.mode == "connection" else []
    env = {
        **os.environ,
        "ANSIBLE_STRATEGY": strategy,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections"),
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
        "ANSIBLE_CALLBACKS_ENABLED": "parity_record",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        # Stock runs pipeline too (one ssh command per module instead of four): the suite stays
        # fast, and ours pipelines always, so both runs ship modules the same way.
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(work / "local-tmp"),
        "PARITY_RECORD": str(record),
        **extra_env,
        **case.env,
    }
    completed = subprocess.run(
        [ansible_playbook(), "-i", str(inventory), str(PLAYBOOKS / case.playbook), "-e", f"root={root}", *connection, *case.args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, cwd=work,
    )
    output = completed.stdout + completed.stderr
    if not record.exists():
        raise AssertionError(f"{'ours' if accelerated else 'stock'} run left no record (rc={completed.returncode}):\n{output[-4000:]}")
    raw = json.loads(record.read_text())
    record.unlink()
    per_host: dict[str, list[dict[str, Any]]] = {}
    for event in raw["events"]:
        per_host.setdefault(event["host"], []).append(normalize(
            {key: event[key] for key in ("task", "status", "item", "result")}, root))
    return Run(completed.returncode, output, raw["recap"], per_host, snapshot(root))


def normalize(value: Any, root: Path, parent: str = "") -> Any:
    """The value with run-specific parts made equal: timings dropped, root and temp paths replaced."""
    if isinstance(value, dict):
        dropped = VOLATILE_KEYS | (VOLATILE_STAT_KEYS if parent == "stat" else frozenset())
        return {key: normalize(item, root, key) for key, item in value.items() if key not in dropped}
    if isinstance(value, list):
        return [normalize(item, root, parent) for item in value]
    if isinstance(value, str):
        text = value.replace(str(root), "ROOT")
        text = _TMP_PATH.sub("TMP", text)
        text = _JOB_ID.sub("JOB", text)
        return _BACKUP_STAMP.sub(".BACKUP~", text)
    return value


def snapshot(root: Path) -> dict[str, Any]:
    """Every path below root: type, permission bits, and content (text with root replaced, else a hash)."""
    files: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        name = str(path.relative_to(root))
        mode = oct(stat.S_IMODE(info.st_mode))
        if stat.S_ISLNK(info.st_mode):
            files[name] = {"type": "link", "target": os.readlink(path).replace(str(root), "ROOT")}
        elif stat.S_ISDIR(info.st_mode):
            files[name] = {"type": "dir", "mode": mode}
        else:
            data = path.read_bytes()
            try:
                content: str = data.decode().replace(str(root), "ROOT")
            except UnicodeDecodeError:
                content = hashlib.sha256(data).hexdigest()
            files[name] = {"type": "file", "mode": mode, "content": content}
    return files


def public_dir(parent: Path, name: str) -> Path:
    """A directory the login user can reach and write (pytest's own temp dirs are private to root)."""
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def assert_same(stock: Run, ours: Run, case: Case) -> None:
    """Equal in every compared respect; the message shows the first difference and both outputs."""
    if stock.rc != case.stock_rc:
        raise AssertionError(f"the stock run of {case.playbook} exited {stock.rc}, expected {case.stock_rc}:\n"
                             f"{stock.output[-4000:]}")
    def fail(what: str, left: Any, right: Any) -> None:
        raise AssertionError(
            f"{what} differ\n--- stock ---\n{json.dumps(left, indent=1, sort_keys=True)[:6000]}\n"
            f"--- ours ---\n{json.dumps(right, indent=1, sort_keys=True)[:6000]}\n"
            f"=== stock output ===\n{stock.output[-3000:]}\n=== our output ===\n{ours.output[-3000:]}"
        )

    if stock.rc != ours.rc:
        fail("exit codes", stock.rc, ours.rc)
    if stock.recap != ours.recap:
        fail("recaps", stock.recap, ours.recap)
    if sorted(stock.per_host) != sorted(ours.per_host):
        fail("hosts with results", sorted(stock.per_host), sorted(ours.per_host))
    for host in sorted(stock.per_host):
        left, right = stock.per_host[host], ours.per_host[host]
        if len(left) != len(right):
            fail(f"results of {host} (count)", [e["task"] + " " + e["status"] for e in left],
                 [e["task"] + " " + e["status"] for e in right])
        for one, other in zip(left, right):
            if one != other:
                fail(f"results of {host} for task {one['task']} ({'; '.join(differences(one, other))})", one, other)
    if stock.files != ours.files:
        fail(f"files under the root ({'; '.join(differences(stock.files, ours.files))})", stock.files, ours.files)


def differences(left: Any, right: Any, where: str = "") -> list[str]:
    """Paths (a.b[2].c) at which two JSON values differ, to name the difference in a failure."""
    if isinstance(left, dict) and isinstance(right, dict):
        found = []
        for key in sorted(set(left) | set(right), key=str):
            if key not in left or key not in right:
                found.append(f"{where}.{key} only in {'ours' if key in right else 'stock'}")
            else:
                found.extend(differences(left[key], right[key], f"{where}.{key}"))
        return found
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        return [d for index, (a, b) in enumerate(zip(left, right)) for d in differences(a, b, f"{where}[{index}]")]
    return [] if left == right else [f"{where}: {left!r} != {right!r}"[:300]]


def jobs_by_verb(server_home: Path) -> dict[str, int]:
    """How many jobs of each verb the accelerated runs' server has seen: proof that a run used the agents."""
    from accelerator.client import Client, ServerUnreachable
    from accelerator.protocol import Kind

    counts: dict[str, int] = {}
    try:
        with Client(server_home, timeout=5.0) as client:
            jobs = client.request(Kind.JOBS)["jobs"]
    except ServerUnreachable:
        return counts
    for job in jobs:
        counts[job["verb"]] = counts.get(job["verb"], 0) + 1
    return counts
