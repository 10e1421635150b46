"""CPU time and peak memory of whole process trees, for the scripts under bench/.

Why this exists: a job engine's cost is spread over many processes (a server, agents, the
short-lived commands they spawn, Directord's multiprocessing helpers), so timing one process
says little.  Everything a benchmark starts goes through `Launcher`, which

- starts each process in its own session (so a whole tree can be signalled at once),
- makes this process a child subreaper (orphans of a measured tree come back to us instead of
  to init, so their CPU time is not lost), and reaps with `os.wait4` to keep their rusage;

and `TreeMonitor` samples every tree every ~50 ms from a background thread: the sum of
resident set sizes over all live processes of a group (its peak is the "peak total RSS"; children
still sharing their parent's memory between fork and exec are left out, see MIN_AGE), and on
demand the CPU total of a group: for every live process, user+system time of itself plus of the
children it has reaped (/proc/PID/stat fields 14-17), plus the rusage of members we reaped
ourselves.  A process that exits moves its time into its parent's "children" counters, so the
difference of that total between two instants is the CPU the group spent in between, including
commands too short-lived to be sampled.

The sampler must stay cheap on the 2-core machines this runs on, or it would distort what it
measures: /proc is read with bare os.open/os.read, and the full scan for new descendants runs
on every 4th sample only (in between, the known members' RSS is read).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36
SAMPLE_INTERVAL = 0.05
DISCOVER_EVERY = 4  # scanning all of /proc for new descendants is the costly part: every 4th sample
PSS_EVERY = 40  # smaps_rollup is costly to read (ms for a big process): PSS is sampled every 2 s
# A child between fork and exec shows its parent's whole RSS, which it only shares; such
# transient children would inflate the sums.  So processes younger than MIN_AGE are not counted,
# nor a child whose memory figures (statm) are its parent's: a vfork child shares its parent's
# memory until it execs, and under heavy load it can stay in that state for longer than MIN_AGE.
MIN_AGE = 0.1
MB = 1024 * 1024

ProcKey = tuple[int, int]  # (pid, start time in ticks): pids are reused within a benchmark run


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        return os.read(fd, 8192)
    except (ProcessLookupError, OSError):
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class ProcStat:
    key: ProcKey
    ppid: int
    state: bytes
    cpu: float  # seconds of user+system time of the process itself (all its threads)
    children_cpu: float  # seconds of user+system time of the children it has waited for


def read_stat(pid: int) -> ProcStat | None:
    """/proc/PID/stat parsed, or None when the process is gone."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()  # the command name may contain spaces and ')'
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcStat(key=(pid, int(fields[19])), ppid=int(fields[1]), state=fields[0],
                    cpu=(utime + stime) / CLOCK_TICKS, children_cpu=(cutime + cstime) / CLOCK_TICKS)


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                stats[stat.key[0]] = stat
    return stats


def read_statm(pid: int) -> bytes:
    """/proc/PID/statm; its second field, resident pages, is the figure VmRSS shows in status."""
    return _read(f"/proc/{pid}/statm") or b"0 0"  # gone, or a zombie: nothing resident


def pss_bytes(pid: int) -> int:
    """Proportional set size: pages shared between processes (e.g. after fork) counted once."""
    raw = _read(f"/proc/{pid}/smaps_rollup")
    for line in (raw or b"").splitlines():
        if line.startswith(b"Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def uptime() -> float:
    return float((_read("/proc/uptime") or b"0").split()[0])


def system_busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, from /proc/stat).

    Compared with the measured processes' CPU over the same window, it shows how much other
    work (another test run, the sampler itself) competed with the benchmark.
    """
    fields = [int(v) for v in (_read("/proc/stat") or b"").split(b"\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_for_idle(max_wait: float, threshold: float = 0.2, window: float = 1.0) -> float:
    """Wait (at most max_wait s) until under `threshold` cores were busy for a whole `window`.

    Returns the last busy figure in cores, so callers can report how quiet the machine was.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = system_busy_seconds()
        time.sleep(window)
        busy = (system_busy_seconds() - before) / window
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process, so we can reap and account them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


@dataclass
class Group:
    """A named set of process trees measured together (e.g. "cluster", "client")."""

    name: str
    members: set[ProcKey] = field(default_factory=set)  # every process ever seen in the trees
    names: dict[ProcKey, str] = field(default_factory=dict)  # the roots, by the name they were started as
    root_of: dict[ProcKey, ProcKey] = field(default_factory=dict)  # member -> the root of its tree
    reaped_cpu: float = 0.0  # rusage of members this process reaped (roots, adopted orphans)
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0
    tree_peaks: dict[ProcKey, int] = field(default_factory=dict)  # root -> peak summed RSS of its tree

    def reset_peaks(self) -> None:
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self.tree_peaks.clear()

    def named_peaks(self) -> dict[str, int]:
        """Peak summed RSS of each started process with its descendants, by the name it was started as."""
        return {self.names[root]: peak for root, peak in self.tree_peaks.items()}


class TreeMonitor:
    """Samples process trees on a background thread; reads CPU totals on demand."""

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.groups: dict[str, Group] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)
        self._samples = 0
        self._live: dict[str, list[ProcStat]] = {}

    def group(self, name: str) -> Group:
        with self._lock:
            return self.groups.setdefault(name, Group(name))

    def track(self, group_name: str, pid: int, name: str) -> ProcKey:
        stat = read_stat(pid)
        if stat is None:
            raise ProcessLookupError(f"{name} (pid {pid}) exited before it could be measured")
        group = self.group(group_name)
        with self._lock:
            group.members.add(stat.key)
            group.names[stat.key] = name
            group.root_of[stat.key] = stat.key
        return stat.key

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
                    parent = todo.pop()
                    for child in children.get(parent.key[0], ()):
                        if child.key not in group.members:
                            group.members.add(child.key)
                            group.root_of[child.key] = group.root_of[parent.key]
                            found.append(child)
                            todo.append(child)
                live[group.name] = found
        return live

    def sample(self) -> None:
        if self._samples % DISCOVER_EVERY == 0:
            self._live = self._live_members(all_stats())
        self._samples += 1
        with self._lock:
            first = any(group.peak_pss == 0 for group in self.groups.values())  # none since a reset
        with_pss = first or self._samples % PSS_EVERY == 0
        born_before = (uptime() - MIN_AGE) * CLOCK_TICKS
        for name, procs in self._live.items():
            statm = {p.key[0]: read_statm(p.key[0]) for p in procs}
            procs = [p for p in procs if p.key[1] <= born_before and statm[p.key[0]] != statm.get(p.ppid)]
            sizes = {p.key: int(statm[p.key[0]].split()[1]) * PAGE_SIZE for p in procs}
            pss = sum(pss_bytes(p.key[0]) for p in procs) if with_pss else 0
            with self._lock:
                group = self.groups[name]
                group.peak_rss = max(group.peak_rss, sum(sizes.values()))
                group.peak_processes = max(group.peak_processes, sum(1 for size in sizes.values() if size))
                group.peak_pss = max(group.peak_pss, pss)
                trees: dict[ProcKey, int] = {}
                for key, size in sizes.items():
                    root = group.root_of[key]
                    trees[root] = trees.get(root, 0) + size
                for root, size in trees.items():
                    group.tree_peaks[root] = max(group.tree_peaks.get(root, 0), size)

    def cpu_seconds(self, name: str) -> float:
        """CPU total of a group now; subtract two readings to get the CPU spent in between."""
        procs = self._live_members(all_stats())[name]
        with self._lock:
            reaped = self.groups[name].reaped_cpu
        return reaped + sum(p.cpu + p.children_cpu for p in procs)

    def add_reaped(self, key: ProcKey, cpu: float) -> None:
        with self._lock:
            for group in self.groups.values():
                if key in group.members:
                    group.reaped_cpu += cpu
                    return


class Launcher:
    """Starts benchmark processes, reaps them (and orphans) with rusage, and kills them all at the end."""

    def __init__(self, monitor: TreeMonitor, log_dir: Path) -> None:
        self.monitor = monitor
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []
        self.exit_codes: dict[int, int] = {}
        self._keys: dict[int, ProcKey] = {}
        become_subreaper()

    def start(self, group: str, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start argv in its own session, logging to LOG_DIR/NAME.log (stdout may be a pipe)."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(list(argv), stdout=log if stdout is None else stdout,
                                     stderr=log, env=env, start_new_session=True)
        self.started.append(popen)
        self._keys[popen.pid] = self.monitor.track(group, popen.pid, name)
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
            key = self._keys.pop(pid, None) or self._orphan_key(pid)
            if key is not None:
                self.monitor.add_reaped(key, usage.ru_utime + usage.ru_stime)
            code = os.waitstatus_to_exitcode(status)
            self.exit_codes[pid] = code
            for popen in self.started:
                if popen.pid == pid and popen.returncode is None:
                    popen.returncode = code  # reaped here: Popen must not wait on a reused pid

    def _orphan_key(self, pid: int) -> ProcKey | None:
        """An adopted orphan's key: the most recent member with this pid."""
        matches = [key for key in self.monitor.all_members() if key[0] == pid]
        return max(matches, key=lambda k: k[1]) if matches else None

    def all_running(self) -> bool:
        """True while no process started here has exited (reaping any that did)."""
        self.reap()
        return all(popen.returncode is None for popen in self.started)

    def wait(self, popen: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait for one started process to exit; raise TimeoutError (it is left running)."""
        deadline = time.monotonic() + timeout
        while popen.returncode is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{popen.args!r} still running after {timeout} s")
            self.reap()
            time.sleep(0.01)
        return popen.returncode

    def _alive_members(self) -> list[ProcStat]:
        members = self.monitor.all_members()
        return [s for s in all_stats().values() if s.key in members and s.key[0] != os.getpid()]

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every process we started and its descendants, SIGKILL what is left after `grace`."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for popen in self.started:
                _signal(popen.pid, sig, group=True)  # each leads its own session and process group
            for stat in self._alive_members():
                _signal(stat.key[0], sig)
            deadline = time.monotonic() + wait
            while any(s.state != b"Z" for s in self._alive_members()) and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
        self.reap()


@contextlib.contextmanager
def measured_session(name: str, keep: bool) -> Iterator[tuple[Launcher, TreeMonitor, Path]]:
    """A scratch directory, a running monitor and a launcher; every process started is killed on exit."""
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    monitor = TreeMonitor().start()
    launcher = Launcher(monitor, scratch)
    try:
        yield launcher, monitor, scratch
    finally:
        launcher.stop_all()
        monitor.stop()
        if keep:
            print(f"  logs kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def install_interrupt_handlers() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt, so `finally:` blocks kill what we
    started (SIGINT too: a shell starts background jobs with it ignored)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def engine_revision(repo: Path) -> str:
    """The commit the engine was measured at, flagged when accelerator/ has uncommitted changes."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], check=False, capture_output=True, text=True)
        return done.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (" + uncommitted changes" if git("status", "--porcelain", "--", "accelerator") else "")


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
