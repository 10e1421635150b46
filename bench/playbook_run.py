"""One playbook, four ways: stock `linear`, mitogen's `mitogen_linear`, ours warm and ours cold.

Why: the strategies exist to make existing playbooks faster than Ansible at its best, so the
same generated playbook runs against the same real sshd hosts with each contender, one after
the other in one invocation, measured the same way (bench/measure.py):

- stock: `linear` with ANSIBLE_PIPELINING=True and Ansible's default ssh_args (ControlMaster=auto,
  ControlPersist=60s); the warm-up run leaves the ssh master connections up, so every timed run
  reuses them, as a second run within a minute does.
- mitogen: mitogen's `mitogen_linear` (pip package mitogen, the `bench` extra), through
  ANSIBLE_STRATEGY_PLUGINS; skipped with the reason when it is not installed or its warm-up run fails.
- ours-warm: `directord.accelerator.linear` with the server and one agent per host already
  running (started by the warm-up run).
- ours-cold: the same, but before each timed run the server and agents are stopped (pids from
  their pidfiles), the remote directory is deleted and the ssh masters of the bootstrap are
  stopped, so the run pays for starting the server, the ssh logins and the upload of the bundle.

Every contender gets one untimed warm-up run first (it also warms the controller's file cache).
Hosts: one sshd per 16 loopback addresses (tests/sshd.py), host N at 127.0.0.(N+1), login user
`dacc`.  The playbook has --tasks tasks of four kinds in rotation (command, copy, file, shell with
register), each host writing below ROOT/HOSTNAME; every run gets a fresh ROOT, and after every run
the file tree (paths, modes, contents) and the recap must be the same as the first run's, with no
failed or unreachable host, or the contender counts as failed.

Measured per run: wall time of ansible-playbook; controller CPU: the ansible-playbook process tree
plus the processes earlier runs of the same contender left running and this run uses (ssh
ControlPersist masters; our server, whose own share is also shown); peak summed RSS and PSS of
those processes; host-side CPU: the sshd processes with everything below them, plus our agents
(started detached from their ssh session, so found by their pidfiles).

Usage: python bench/playbook_run.py [--hosts 10] [--tasks 20] [--forks N] [--runs 3]
                                    [--contenders stock,mitogen,ours-warm,ours-cold] [--keep] [--json PATH]
The big case: --hosts 50 --tasks 50 --forks 50.
Prints markdown tables and writes bench/results/playbook_run-STAMP.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.engine import free_port
from bench.measure import (
    MB,
    PR_SET_CHILD_SUBREAPER,
    Launcher,
    TreeMonitor,
    all_stats,
    engine_revision,
    install_interrupt_handlers,
    machine_info,
    markdown_table,
    measured_session,
    median,
    read_stat,
    system_busy_seconds,
    wait_for_idle,
    write_results,
)
from tests.sshd import MAX_ADDRESSES_PER_SSHD, SshHosts, loopback_addresses

CONTENDERS = ("stock", "mitogen", "ours-warm", "ours-cold")
RATIO_PAIRS = (("stock", "ours-warm"), ("mitogen", "ours-warm"), ("stock", "ours-cold"), ("mitogen", "ours-cold"))
RATIO_FIGURES = {"wall": "wall", "cpu_controller": "controller CPU", "cpu_hosts": "host CPU", "cpu_total": "CPU total",
                 "peak_rss_mb": "peak RSS", "peak_pss_mb": "peak PSS"}
TASK_KINDS = ("command", "copy", "file", "shell")
FIRST_ADDRESS = 2  # host N is 127.0.0.(N+1)
HOSTS_GROUP = "hosts"  # the monitor group of the sshd trees and our agents
SERVER = "server"  # the name our server is tracked under
RUN_TIMEOUT = 1800.0
STOP_GRACE = 10.0
IDLE_TIMEOUT = 900  # our agents and server must outlive the gaps between warm runs
HOST_DIR = "{{ root }}/{{ inventory_hostname }}"
# ansible-playbook runs as a child subreaper (the flag survives exec): ssh ControlPersist masters
# detach from the ssh that started them, and would otherwise be re-parented out of the measured
# tree (to this script), their CPU and memory lost from the contender's figures.
AS_SUBREAPER = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(%d, 1, 0, 0, 0); "
                "os.execv(sys.argv[1], sys.argv[1:])" % PR_SET_CHILD_SUBREAPER)
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.MULTILINE)


class ContenderUnavailable(RuntimeError):
    """The contender cannot run here (mitogen missing or failing); the text says why."""


class RunFailed(RuntimeError):
    """A run failed, or its outcome differs from the first run's: its figures mean nothing."""


@dataclass
class Bench:
    """What every run of this invocation shares: processes, hosts, files and our server's settings."""

    launcher: Launcher
    monitor: TreeMonitor
    work: Path
    inventory: Path
    playbook: Path
    hostnames: list[str]
    forks: int
    port: int
    expected: dict[str, Any] = field(default_factory=dict)  # the first verified run's recap and files

    @property
    def home(self) -> Path:
        return self.work / "server"

    @property
    def remote_dir(self) -> Path:
        return self.work / "remote" / "agents-home"

    def control_dir(self, contender: str) -> Path:
        """Each contender's own ssh ControlPath directory: no contender reuses another's masters."""
        return self.work / "cp" / contender


@dataclass
class Measurement:
    """One contender's one run."""

    contender: str
    label: str  # "warmup" or "run N"
    wall: float  # ansible-playbook start -> exit
    cpu_controller: float  # ansible-playbook tree + processes left by earlier runs (ssh masters, our server)
    cpu_server: float | None  # our server's share of cpu_controller (None: not ours)
    cpu_hosts: float  # sshd trees + our agents with their children
    peak_rss_mb: float  # controller processes, summed VmRSS
    peak_pss_mb: float  # the same, pages shared between processes counted once
    agents_started: int | None  # agents that were not running before the run (None: not ours)
    sampler_cpu: float  # this script's own CPU meanwhile (mostly the /proc sampler)
    other_cpu: float  # CPU the rest of the machine used meanwhile

    @property
    def cpu_total(self) -> float:
        return self.cpu_controller + self.cpu_hosts


# -- hosts, inventory and playbook -----------------------------------------------------------


def start_hosts(bench_dir: Path, count: int, monitor: TreeMonitor) -> list[SshHosts]:
    """sshd processes serving `count` loopback addresses, 16 per process, each on its own port.

    Each sshd is tracked in the hosts group: the sessions, shells and modules below it are the
    host-side cost.
    """
    started = []
    for index, first in enumerate(range(0, count, MAX_ADDRESSES_PER_SSHD)):
        addresses = loopback_addresses(min(MAX_ADDRESSES_PER_SSHD, count - first), first=FIRST_ADDRESS + first)
        hosts = SshHosts(bench_dir / f"sshd{index}", addresses, free_port())
        started.append(hosts)
        hosts.start()
        assert hosts.process is not None
        monitor.track(HOSTS_GROUP, hosts.process.pid, f"sshd{index}")
    return started


def write_inventory(path: Path, sshds: list[SshHosts]) -> list[str]:
    """One INI inventory over all sshds (group `targets`), hosts named host1..hostN in address order."""
    names, sections = [], []
    for hosts in sshds:
        chunk = [f"host{len(names) + index + 1}" for index in range(len(hosts.addresses))]
        sections.append(hosts.inventory(chunk))
        names += chunk
    path.write_text("".join(sections))
    return names


def task(index: int) -> dict[str, Any]:
    """Task `index` of the playbook: the kind rotates, so every kind is run about tasks/4 times.

    The command task creates the host's directory first (mkdir -p), the copy task writes what
    the last shell task registered, so a lost or wrong registered result shows in the files.
    """
    kind = TASK_KINDS[index % len(TASK_KINDS)]
    name = f"{index:03d} {kind}"
    if kind == "command":
        return {"name": name, "ansible.builtin.command": f"mkdir -p {HOST_DIR}/dir-{index:03d}"}
    if kind == "copy":
        content = (f"task {index} on {{{{ inventory_hostname }}}}, "
                   "last shell: {{ last_shell.stdout | default('none') }}\n")
        return {"name": name, "ansible.builtin.copy": {"dest": f"{HOST_DIR}/copy-{index:03d}.txt",
                                                       "content": content, "mode": "0640"}}
    if kind == "file":
        return {"name": name, "ansible.builtin.file": {"path": f"{HOST_DIR}/file-{index:03d}",
                                                       "state": "directory", "mode": "0750"}}
    out = f"{HOST_DIR}/shell-{index:03d}.txt"
    count = f'echo "{{{{ inventory_hostname }}}}: $(ls {HOST_DIR} | wc -l) entries"'
    return {"name": name, "register": "last_shell", "ansible.builtin.shell": f"{count} > {out} && cat {out}"}


def write_playbook(path: Path, tasks: int) -> None:
    play = {"name": "playbook_run benchmark", "hosts": "targets", "gather_facts": False,
            "tasks": [task(index) for index in range(tasks)]}
    path.write_text(yaml.safe_dump([play], sort_keys=False, width=1000))


# -- contenders' environments --------------------------------------------------------------


def mitogen_strategy_dir() -> Path:
    """ansible_mitogen's strategy plugins, which ANSIBLE_STRATEGY_PLUGINS must point at."""
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or spec.origin is None:
        raise ContenderUnavailable("mitogen is not installed in this Python: "
                                   f"{sys.executable} -m pip install 'mitogen>=0.3.20' (the `bench` extra)")
    return Path(spec.origin).parent / "plugins" / "strategy"


def contender_env(bench: Bench, contender: str) -> dict[str, str]:
    """The same Ansible settings for every contender; only the strategy (and ours' settings) differ."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(bench.work / "ansible.cfg"),  # no ansible.cfg of the cwd or home applies
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_FORKS": str(bench.forks),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(bench.work / "local-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(bench.control_dir(contender)),
    }
    if contender == "stock":
        return {**env, "ANSIBLE_STRATEGY": "linear"}
    if contender == "mitogen":
        return {**env, "ANSIBLE_STRATEGY_PLUGINS": str(mitogen_strategy_dir()), "ANSIBLE_STRATEGY": "mitogen_linear"}
    return {
        **env,
        "ANSIBLE_STRATEGY": "directord.accelerator.linear",
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections"),
        "DIRECTORD_ACCELERATOR_HOME": str(bench.home),
        "DIRECTORD_ACCELERATOR_PORT": str(bench.port),
        "DIRECTORD_ACCELERATOR_REMOTE_DIR": str(bench.remote_dir),
        "DIRECTORD_ACCELERATOR_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    }


def ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    return str(beside) if beside.exists() else "ansible-playbook"


# -- our server and agents -----------------------------------------------------------------


def ours_pids(bench: Bench) -> dict[str, int]:
    """Our live server ("server") and agents (by agent name), from their pidfiles.

    A pid counts only while its command line names this invocation's directories: a pidfile
    left behind must never make us signal an unrelated process that reused the pid.
    """
    pidfiles = {SERVER: bench.home / "server.pid",
                **{path.parent.name: path for path in bench.remote_dir.glob("agents/*/agent.pid")}}
    pids = {}
    for name, path in pidfiles.items():
        try:
            pid = int(path.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if str(bench.home if name == SERVER else bench.remote_dir) in cmdline:
            pids[name] = pid
    return pids


def track_ours(bench: Bench, contender: str) -> dict[str, int]:
    """Count our server in the contender's controller group and our agents in the hosts group.

    Neither is a descendant of what the monitor tracks when it runs: the server was started by
    an earlier run, an agent detaches from the ssh session that started it.  Returns their pids.
    """
    pids = ours_pids(bench)
    for name, pid in pids.items():
        try:
            bench.monitor.track(contender if name == SERVER else HOSTS_GROUP, pid, name)
        except ProcessLookupError:
            pass
    return pids


def process_cpu(pid: int | None) -> float:
    """CPU seconds of one process and the children it reaped so far; 0 when there is none."""
    stat_now = read_stat(pid) if pid is not None else None
    return 0.0 if stat_now is None else stat_now.cpu + stat_now.children_cpu


def stop_processes(launcher: Launcher, pids: Iterable[int]) -> None:
    """SIGTERM the processes and their descendants, SIGKILL what is left after STOP_GRACE.

    Returns once each is gone or a zombie its own parent will reap; our adopted orphans are
    reaped here, so their CPU is accounted before the next run's first reading.
    """
    stats = all_stats()
    children: dict[int, list[int]] = {}
    for one in stats.values():
        children.setdefault(one.ppid, []).append(one.key[0])
    todo, keys = [pid for pid in pids if pid in stats], set()
    while todo:
        pid = todo.pop()
        keys.add(stats[pid].key)
        todo += children.get(pid, [])

    def alive() -> list[int]:
        launcher.reap()
        now = [read_stat(pid) for pid, _ in keys]
        return [s.key[0] for s in now if s is not None and s.key in keys
                and (s.state != b"Z" or s.ppid == os.getpid())]

    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_leftovers(bench: Bench, contender: str) -> None:
    """Stop what the contender's runs left running: ssh masters, and our server and agents."""
    members = bench.monitor.group(contender).members
    live = [s.key[0] for s in all_stats().values() if s.key in members]
    stop_processes(bench.launcher, [*live, *ours_pids(bench).values()])
    (bench.home / "server.pid").unlink(missing_ok=True)


def reset_cold(bench: Bench) -> None:
    """The state of a first run on new hosts: no server, no agents, no remote dir, no ssh masters."""
    stop_leftovers(bench, "ours-cold")
    shutil.rmtree(bench.remote_dir, ignore_errors=True)
    shutil.rmtree(bench.control_dir("ours-cold"), ignore_errors=True)


# -- checks --------------------------------------------------------------------------------


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters by host, e.g. {"host1": {"ok": 20, "changed": 20, "failed": 0, ...}}."""
    recap_text = output.rsplit("PLAY RECAP", 1)[-1] if "PLAY RECAP" in output else ""
    return {match[1]: {key: int(value) for key, value in (pair.split("=") for pair in match[2].split())}
            for match in RECAP_LINE.finditer(recap_text)}


def snapshot(root: Path) -> dict[str, list[str]]:
    """Every path below root: type, permission bits and content (times differ between any two runs).

    Contents are kept as text when short, so a difference reads as what each run wrote.
    """
    files = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "other"
        files[str(path.relative_to(root))] = [kind, oct(stat.S_IMODE(info.st_mode)),
                                              file_content(path) if kind == "file" else ""]
    return files


def file_content(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode() if len(data) <= 1000 else "sha256:" + hashlib.sha256(data).hexdigest()
    except UnicodeDecodeError:
        return "sha256:" + hashlib.sha256(data).hexdigest()


def first_difference(left: dict[str, Any], right: dict[str, Any]) -> str:
    for key in sorted(set(left) | set(right)):
        if left.get(key) != right.get(key):
            return f"{key}: expected {left.get(key)}, got {right.get(key)}"
    return "none"


def check_outcome(bench: Bench, what: str, code: int, output: str, root: Path,
                  parse: Callable[[str], dict[str, dict[str, int]]] = parse_recap) -> None:
    """Raise RunFailed unless the run succeeded on every host and left what the first run left.

    `parse` reads the per-host counters from the run's output (default: ansible-playbook's recap).
    """
    tail = output[-3000:]
    recap = parse(output)
    if code != 0:
        raise RunFailed(f"{what}: exited {code}:\n{tail}")
    if sorted(recap) != sorted(bench.hostnames):
        raise RunFailed(f"{what}: recap lists {len(recap)} hosts, expected {len(bench.hostnames)}:\n{tail}")
    bad = {host: counts for host, counts in recap.items() if counts.get("failed") or counts.get("unreachable")}
    if bad:
        raise RunFailed(f"{what}: failed or unreachable hosts {bad}:\n{tail}")
    outcome = {"recap": recap, "files": snapshot(root)}
    if not outcome["files"]:
        raise RunFailed(f"{what}: the playbook left no files under {root}")
    bench.expected = bench.expected or {**outcome, "first": what}
    for key in ("recap", "files"):
        if outcome[key] != bench.expected[key]:
            raise RunFailed(f"{what}: {key} differ from {bench.expected['first']}'s; first difference: "
                            f"{first_difference(bench.expected[key], outcome[key])}")


# -- one run, one contender ----------------------------------------------------------------


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_readings(bench: Bench, contender: str, ours: dict[str, int]) -> dict[str, float]:
    """CPU totals now; the difference of two readings is what each spent in between."""
    return {"controller": bench.monitor.cpu_seconds(contender), "hosts": bench.monitor.cpu_seconds(HOSTS_GROUP),
            "server": process_cpu(ours.get(SERVER)), "busy": system_busy_seconds(), "self": own_cpu_seconds()}


def root_of(bench: Bench, contender: str, label: str) -> Path:
    """The root directory the hosts write below in this contender's run `label`."""
    return bench.work / "roots" / f"{contender}-{label.replace(' ', '')}"


def run_once(bench: Bench, contender: str, label: str, env: dict[str, str], *,
             command: Callable[[Path], list[str]] | None = None,
             parse: Callable[[str], dict[str, dict[str, int]]] = parse_recap,
             root: Path | None = None) -> Measurement:
    """One ansible-playbook run on a fresh root, measured, then checked (checks are not timed).

    `command(root)` gives another command line to run and measure instead (its preparation is not
    timed), `parse` reads its output's recap; `root` runs again on an existing root.
    """
    name = f"{contender}-{label.replace(' ', '')}"
    if root is None:
        root = root_of(bench, contender, label)
        root.mkdir(parents=True)
        root.chmod(0o777)  # the login user writes here
    argv = command(root) if command else [ansible_playbook(), "-i", str(bench.inventory), str(bench.playbook),
                                          "-e", f"root={root}"]
    group = bench.monitor.group(contender)  # created before its first CPU reading
    before = track_ours(bench, contender)
    readings = cpu_readings(bench, contender, before)
    group.reset_peaks()
    started = time.monotonic()
    popen = bench.launcher.start(contender, name, [sys.executable, "-S", "-c", AS_SUBREAPER, *argv], env=env)
    code = bench.launcher.wait(popen, timeout=RUN_TIMEOUT)
    wall = time.monotonic() - started
    after = track_ours(bench, contender)  # a cold run started them: all their CPU belongs to this run
    spent = {key: value - readings[key] for key, value in cpu_readings(bench, contender, after).items()}
    output = (bench.launcher.log_dir / f"{name}.log").read_text(errors="replace")
    check_outcome(bench, f"{contender} {label}", code, output, root, parse)
    ours = contender.startswith("ours")
    started_agents = check_agents(bench, contender, label, before, after) if ours else None
    return Measurement(
        contender=contender, label=label, wall=wall, cpu_controller=spent["controller"],
        cpu_server=spent["server"] if ours else None, cpu_hosts=spent["hosts"], peak_rss_mb=group.peak_rss / MB,
        peak_pss_mb=group.peak_pss / MB, agents_started=started_agents, sampler_cpu=spent["self"],
        other_cpu=spent["busy"] - spent["self"] - spent["controller"] - spent["hosts"])


def check_agents(bench: Bench, contender: str, label: str, before: dict[str, int], after: dict[str, int]) -> int:
    """Ours must end with one agent per host; a warm run must start none, a cold run all of them,
    a warm-up run those that were not running yet.

    Returns how many agents the run started.
    """
    running = {name: pid for name, pid in after.items() if name != SERVER}
    started = sum(1 for name, pid in running.items() if before.get(name) != pid)
    hosts = len(bench.hostnames)
    wanted = (hosts if contender == "ours-cold" else
              hosts - sum(1 for name in before if name != SERVER) if label == "warmup" else 0)
    if len(running) != hosts or started != wanted:
        raise RunFailed(f"{contender} {label}: {len(running)} agents running after the run (expected {hosts}), "
                        f"{started} started during it (expected {wanted})")
    return started


def measure_contender(bench: Bench, contender: str, runs: int, idle_wait: float, *,
                      env: dict[str, str] | None = None, command: Callable[[Path], list[str]] | None = None,
                      parse: Callable[[str], dict[str, dict[str, int]]] = parse_recap) -> list[Measurement]:
    """The warm-up run, then `runs` timed runs (the first element is the warm-up).

    env, command and parse: as for run_once (default env: the contender's Ansible settings).
    """
    env = env if env is not None else contender_env(bench, contender)
    how = {"command": command, "parse": parse}
    print(f"{contender}: warm-up run ...", file=sys.stderr, flush=True)
    try:
        measured = [run_once(bench, contender, "warmup", env, **how)]
    except RunFailed as exc:
        if contender == "mitogen":  # mitogen not working with this Ansible is a finding, not our failure
            raise ContenderUnavailable(f"mitogen_linear failed its warm-up run: {exc}") from exc
        raise
    for run in range(1, runs + 1):
        if contender == "ours-cold":
            reset_cold(bench)
        busy = wait_for_idle(idle_wait)
        print(f"{contender}: run {run}/{runs} (machine busy before: {busy:.2f} cores) ...", file=sys.stderr, flush=True)
        result = run_once(bench, contender, f"run {run}", env, **how)
        measured.append(result)
        print(f"  {result.wall:.2f} s, controller CPU {result.cpu_controller:.2f} s, host CPU "
              f"{result.cpu_hosts:.2f} s, peak RSS {result.peak_rss_mb:.1f} MB", file=sys.stderr, flush=True)
    return measured


def measure_all(args: argparse.Namespace, launcher: Launcher, monitor: TreeMonitor,
                work: Path) -> tuple[dict[str, list[Measurement]], dict[str, str], list[str]]:
    """Hosts up, playbook written, every selected contender in turn; (measurements, skipped, errors)."""
    work.chmod(0o755)  # the login user must reach the roots and the remote dir below it
    (work / "remote").mkdir(mode=0o777)
    (work / "remote").chmod(0o777)
    (work / "ansible.cfg").write_text("[defaults]\n")
    sshds = start_hosts(work, args.hosts, monitor)
    try:
        bench = Bench(launcher=launcher, monitor=monitor, work=work, inventory=work / "inventory",
                      playbook=work / "playbook.yml", hostnames=write_inventory(work / "inventory", sshds),
                      forks=args.forks, port=free_port())
        write_playbook(bench.playbook, args.tasks)
        skipped = {name: "not selected (--contenders)" for name in CONTENDERS if name not in args.contenders}
        measured: dict[str, list[Measurement]] = {}
        errors: list[str] = []
        for contender in args.contenders:
            try:
                measured[contender] = measure_contender(bench, contender, args.runs, args.idle_wait)
            except ContenderUnavailable as exc:
                skipped[contender] = str(exc)
                print(f"  SKIPPED: {exc}", file=sys.stderr, flush=True)
            except (RunFailed, TimeoutError) as exc:
                errors.append(f"{contender}: {exc}")
                print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
            finally:
                stop_leftovers(bench, contender)
        return measured, skipped, errors
    finally:
        for hosts in sshds:
            hosts.stop()


# -- report --------------------------------------------------------------------------------


def summarize(runs: list[Measurement]) -> dict[str, Any]:
    """Medians over the timed runs of every figure the report shows."""
    def med(value: Any) -> float | None:
        values = [value(m) for m in runs]
        return None if any(v is None for v in values) else median(values)

    return {
        "runs": len(runs), "wall": med(lambda m: m.wall), "cpu_controller": med(lambda m: m.cpu_controller),
        "cpu_server": med(lambda m: m.cpu_server), "cpu_hosts": med(lambda m: m.cpu_hosts),
        "cpu_total": med(lambda m: m.cpu_total), "peak_rss_mb": med(lambda m: m.peak_rss_mb),
        "peak_pss_mb": med(lambda m: m.peak_pss_mb), "sampler_cpu": med(lambda m: m.sampler_cpu),
        "other_cpu": med(lambda m: m.other_cpu),
    }


def ratios(summary: dict[str, dict[str, Any]],
           pairs: Iterable[tuple[str, str]] = RATIO_PAIRS) -> dict[str, dict[str, float]]:
    """Theirs divided by ours for each pair measured: above 1 means ours is faster or leaner."""
    return {f"{theirs}/{ours}": {key: summary[theirs][key] / summary[ours][key] for key in RATIO_FIGURES
                                 if summary[ours][key]}
            for theirs, ours in pairs if theirs in summary and ours in summary}


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report_text(summary: dict[str, dict[str, Any]], found: dict[str, dict[str, float]], skipped: dict[str, str],
                errors: list[str]) -> str:
    rows = [[name, s["runs"], fmt(s["wall"]), fmt(s["cpu_controller"]), fmt(s["cpu_server"]), fmt(s["cpu_hosts"]),
             fmt(s["cpu_total"]), fmt(s["peak_rss_mb"], 1), fmt(s["peak_pss_mb"], 1), fmt(s["sampler_cpu"]),
             fmt(s["other_cpu"])] for name, s in summary.items()]
    ratio_rows = [[pair, *(f"{r[key]:.2f}x" if key in r else "-" for key in RATIO_FIGURES)]
                  for pair, r in found.items()]
    lines = [
        markdown_table(["contender", "runs", "wall s", "controller CPU s", "of which server", "host CPU s",
                        "CPU s total", "controller peak RSS MB", "peak PSS MB", "sampler CPU s", "other CPU s"],
                       rows), "",
    ]
    if ratio_rows:
        lines += [markdown_table(["theirs/ours", *RATIO_FIGURES.values()], ratio_rows), ""]
    lines += [
        "- controller: ansible-playbook with all its processes, plus the contender's processes left by earlier "
        "runs (ssh ControlPersist masters; our server); host: the sshd processes with their sessions and modules, "
        "plus our agents; theirs/ours above 1 means ours is faster or leaner",
        "- sampler CPU s: this script's own CPU during the run; other CPU s: the rest of the machine's busy time "
        "(other work); large values mean disturbed figures",
    ]
    lines += [f"- {name} not run: {reason}" for name, reason in skipped.items()]
    lines += [f"- error: {error}" for error in errors]
    return "\n".join(lines)


def reproduce_command(script: str = "bench/playbook_run.py") -> str:
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    return f"cd {REPO} && {shown} {script} {shlex.join(sys.argv[1:])}".rstrip()


def code_revision() -> str:
    """engine_revision, also flagged when the plugins (what a playbook run exercises) have uncommitted changes."""
    done = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "plugins"],
                          check=False, capture_output=True, text=True)
    return engine_revision(REPO) + (" + uncommitted plugin changes" if done.stdout.strip() else "")


def versions() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {"ansible-core": version("ansible-core"), "mitogen": version("mitogen")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10, help="loopback hosts 127.0.0.2 upwards")
    parser.add_argument("--tasks", type=int, default=20, help="tasks (command, copy, file, shell in turn)")
    parser.add_argument("--forks", type=int, default=None, help="ANSIBLE_FORKS (default: max(5, hosts))")
    parser.add_argument("--runs", type=int, default=3,
                        help="timed runs of each contender after its warm-up run (medians reported)")
    parser.add_argument("--contenders", type=lambda text: text.split(","), default=list(CONTENDERS),
                        help="comma-separated subset of " + ",".join(CONTENDERS))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, roots, playbook)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the JSON results here (default: bench/results/playbook_run-STAMP.json)")
    parser.add_argument("--idle-wait", type=float, default=30.0,
                        help="before each timed run, wait up to this many seconds for the machine to be idle "
                             "(keep it under ControlPersist's 60 s, or stock's ssh masters expire between runs)")
    args = parser.parse_args()
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    if not 1 <= args.hosts <= 255 - FIRST_ADDRESS or args.tasks < 1 or args.runs < 1:
        parser.error(f"--hosts must be 1..{255 - FIRST_ADDRESS}, --tasks and --runs at least 1")
    args.forks = args.forks or max(5, args.hosts)
    return args


def main() -> int:
    args = parse_args()
    install_interrupt_handlers()
    info = {**machine_info(), "revision": code_revision(), **versions()}
    with measured_session("playbook", args.keep) as (launcher, monitor, work):
        measured, skipped, errors = measure_all(args, launcher, monitor, work)
    if code_revision() != info["revision"]:
        errors.append(f"the code changed during the runs (from {info['revision']} to {code_revision()}): "
                      "figures mix versions")
    summary = {name: summarize(runs[1:]) for name, runs in measured.items()}
    found = ratios(summary)
    command = reproduce_command()
    print(f"\n{args.tasks} tasks x {args.hosts} hosts (sshd on loopback), forks {args.forks}; ansible-core "
          f"{info['ansible-core']}, mitogen {info['mitogen']}; {info['nproc']} x {info['cpu_model']}, "
          f"{info['ram_gib']} GiB, Linux {info['kernel']}, Python {info['python']}; {info['date']}; "
          f"revision {info['revision']}; medians of {args.runs} timed run(s) after one warm-up run each\n")
    print(report_text(summary, found, skipped, errors))
    print(f"\nreproduce: {command}")
    data = {"machine": info, "options": {k: str(v) for k, v in vars(args).items()}, "command": command,
            "summary": summary, "ratios": found, "skipped": skipped, "errors": errors,
            "runs": {name: [{**asdict(m), "cpu_total": m.cpu_total} for m in runs] for name, runs in measured.items()}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        path = args.json
    else:
        path = write_results(REPO / "bench" / "results", "playbook_run", data)
    path = path.resolve()
    print(f"results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
