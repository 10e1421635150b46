"""CPU time and peak memory of whole process trees, for the scripts under bench/.

Why this exists: a job engine's cost is spread over many processes (a server, agents, the
short-lived commands they spawn, Directord's multiprocessing helpers), so timing one process
says little.  Everything a benchmark starts goes through `Launcher`, which

- starts each process in its own session (so a whole tree can be signalled at once),
- makes this process a child subreaper (orphans of a measured tree come back to us instead of
  to init, so their CPU time is not lost), and reaps with `os.wait4` to keep their rusage;

and `TreeMonitor` samples every tree every ~50 ms from a background thread: the sum of
VmRSS over all live processes of a group (its peak is the "peak total RSS"), and on demand the
CPU total of a group: for every live process user+system time of itself plus of the children
it has reaped (/proc/PID/stat fields 14-17), plus the rusage of members we reaped ourselves.
A process that exits moves its time into its parent's "children" counters, so differences of
that total between two instants are the CPU spent by the group in between, including
commands too short-lived to be sampled.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36
SAMPLE_INTERVAL = 0.05
PSS_EVERY = 10  # smaps_rollup is costly to read; sample PSS on every 10th RSS sample
MB = 1024 * 1024

ProcKey = tuple[int, int]  # (pid, start time in ticks): pids are reused within a benchmark run


@dataclass(frozen=True, slots=True)
class ProcStat:
    key: ProcKey
    ppid: int
    cpu: float  # seconds of user+system time of the process itself (all its threads)
    children_cpu: float  # seconds of user+system time of its children it has waited for


def read_stat(pid: int) -> ProcStat | None:
    """/proc/PID/stat parsed, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(b")") + 2:].split()  # the command name may contain spaces and ')'
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcStat(key=(pid, int(fields[19])), ppid=int(fields[1]),
                    cpu=(utime + stime) / CLOCK_TICKS, children_cpu=(cutime + cstime) / CLOCK_TICKS)


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                stats[stat.key[0]] = stat
    return stats


def _status_kb(pid: int, path: str, label: bytes) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_bytes().splitlines():
            if line.startswith(label):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0  # gone, or a zombie (which has no memory left)


def rss_bytes(pid: int) -> int:
    return _status_kb(pid, "status", b"VmRSS:") * 1024


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (e.g. after fork) counted once across processes."""
    return _status_kb(pid, "smaps_rollup", b"Pss:") * 1024


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process, so we can reap and account them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


@dataclass
class Group:
    """A named set of process trees measured together (e.g. "server+agents", "client")."""

    name: str
    roots: set[ProcKey] = field(default_factory=set)
    members: set[ProcKey] = field(default_factory=set)  # every process ever seen in the trees
    reaped_cpu: float = 0.0  # rusage of members this process reaped (orphans, roots)
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0

    def reset_peaks(self) -> None:
        self.peak_rss = self.peak_pss = self.peak_processes = 0


class TreeMonitor:
    """Samples process trees on a background thread; reads CPU totals on demand."""

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.groups: dict[str, Group] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)
        self._samples = 0

    def group(self, name: str) -> Group:
        with self._lock:
            return self.groups.setdefault(name, Group(name))

    def track(self, name: str, pid: int) -> None:
        stat = read_stat(pid)
        if stat is None:
            raise ProcessLookupError(f"process {pid} exited before it could be measured")
        group = self.group(name)
        with self._lock:
            group.roots.add(stat.key)
            group.members.add(stat.key)

    def owner(self, key: ProcKey) -> Group | None:
        with self._lock:
            return next((g for g in self.groups.values() if key in g.members), None)

    def all_members(self) -> set[ProcKey]:
        with self._lock:
            return set().union(*(g.members for g in self.groups.values()))

    def start(self) -> TreeMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def _live_members(self, stats: dict[int, ProcStat]) -> dict[str, list[ProcStat]]:
        """Each group's live processes: members seen before plus any new descendants of them."""
        children: dict[int, list[ProcStat]] = {}
        for stat in stats.values():
            children.setdefault(stat.ppid, []).append(stat)
        live: dict[str, list[ProcStat]] = {}
        with self._lock:
            for group in self.groups.values():
                found = [s for s in stats.values() if s.key in group.members]
                todo = list(found)
                while todo:
                    for child in children.get(todo.pop().key[0], ()):
                        if child.key not in group.members:
                            group.members.add(child.key)
                            found.append(child)
                            todo.append(child)
                live[group.name] = found
        return live

    def sample(self) -> None:
        self._samples += 1
        with_pss = self._samples % PSS_EVERY == 0
        for name, procs in self._live_members(all_stats()).items():
            pids = [p.key[0] for p in procs]
            sizes = [rss_bytes(pid) for pid in pids]
            pss = sum(pss_bytes(pid) for pid in pids) if with_pss else 0
            with self._lock:
                group = self.groups[name]
                group.peak_rss = max(group.peak_rss, sum(sizes))
                group.peak_processes = max(group.peak_processes, sum(1 for size in sizes if size))
                group.peak_pss = max(group.peak_pss, pss)

    def cpu_seconds(self, name: str) -> float:
        """CPU total of a group now; subtract two readings to get the CPU spent in between."""
        procs = self._live_members(all_stats())[name]
        with self._lock:
            reaped = self.groups[name].reaped_cpu
        return reaped + sum(p.cpu + p.children_cpu for p in procs)

    def add_reaped(self, key: ProcKey, cpu: float) -> None:
        group = self.owner(key)
        if group is not None:
            with self._lock:
                group.reaped_cpu += cpu


class Launcher:
    """Starts benchmark processes, reaps them (and orphans) with rusage, and kills them all at the end."""

    def __init__(self, monitor: TreeMonitor, log_dir: Path) -> None:
        self.monitor = monitor
        self.log_dir = log_dir
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.keys: dict[int, ProcKey] = {}
        self.exit_codes: dict[int, int] = {}
        self.started: list[subprocess.Popen[bytes]] = []
        become_subreaper()

    def start(self, group: str, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start argv in its own session, logging to LOG_DIR/NAME.log (stdout may be a pipe)."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(list(argv), stdout=log if stdout is None else stdout,
                                     stderr=log, env=env, start_new_session=True)
        self.processes[popen.pid] = popen
        self.started.append(popen)
        stat = read_stat(popen.pid)
        if stat is not None:
            self.keys[popen.pid] = stat.key
        self.monitor.track(group, popen.pid)
        return popen

    def reap(self) -> None:
        """Collect every exited child (ours or adopted orphans), crediting its CPU to its group."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            key = self.keys.pop(pid, None) or self._key_of_reaped(pid)
            if key is not None:
                self.monitor.add_reaped(key, usage.ru_utime + usage.ru_stime)
            popen = self.processes.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if popen is not None:
                popen.returncode = code  # we reaped it: keep Popen from waiting on a reused pid
            self.exit_codes[pid] = code

    def _key_of_reaped(self, pid: int) -> ProcKey | None:
        """An adopted orphan's key: the most recent member with this pid."""
        matches = [key for key in self.monitor.all_members() if key[0] == pid]
        return max(matches, key=lambda k: k[1]) if matches else None

    def all_running(self) -> bool:
        """True while no process started here has exited (reaping any that did)."""
        self.reap()
        return all(popen.pid not in self.exit_codes for popen in self.started)

    def wait(self, popen: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait for one started process to exit; raise TimeoutError (it is left running)."""
        deadline = time.monotonic() + timeout
        while popen.pid not in self.exit_codes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{popen.args!r} still running after {timeout} s")
            self.reap()
            time.sleep(0.01)
        return self.exit_codes[popen.pid]

    def alive_members(self) -> list[int]:
        members = self.monitor.all_members()
        return [pid for pid, stat in all_stats().items() if stat.key in members and pid != os.getpid()]

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every session we started, SIGKILL whatever is left after `grace`, reap all."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive_members_not_zombie() and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        for pid in self.alive_members():
            _kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.alive_members_not_zombie() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.reap()

    def alive_members_not_zombie(self) -> list[int]:
        alive = []
        for pid in self.alive_members():
            try:
                state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                continue
            if state != b"Z":
                alive.append(pid)
        return alive

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.processes):
            try:
                os.killpg(pid, sig)  # each process leads its own session and process group
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self.alive_members():
            _kill(pid, sig)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def install_sigterm_as_interrupt() -> None:
    """Turn SIGTERM into KeyboardInterrupt so `finally:` blocks kill what we started."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on; printed in reports and saved with results."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(directory: Path, stem: str, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
