"""1,000 RUN jobs (`echo hello world`) on 10 agents: Accelerator vs Directord 0.12.0 vs the spawn floor.

Why: the point of the engine is to run many small tasks across hosts with little overhead, and
Directord (what it replaces) is the reference.  Three contenders run one after the other on
this machine, each measured the same way (bench/measure.py: wall time, CPU of every process
involved including the submitting client, peak summed RSS of the server and agents):

- accelerator: a Curve-secured server and N agents (separate processes, own homes); a client
  process submits the jobs in one request, each job aimed at every agent, and waits for every
  result.  Timed from first submit to last result with all agents already connected (the warm
  steady state); the end-to-end time from starting the server is reported beside it.
- directord: Directord 0.12.0 from PyPI in its own virtualenv, zeromq driver (unencrypted: its
  Curve mode needs keys under /etc/directord), one server and N clients with their own
  identities, machine ids and cache paths; the jobs go in as one orchestration (bench/submit_directord.py).
- floor: jobs x agents sequential `sh -c` spawns from one fresh Python process (bench/spawn_floor.py).

Usage: python bench/engine_run.py [--runs N] [--jobs 1000] [--agents 10] [--skip-directord]
Prints a markdown table and writes bench/results/engine_run-STAMP.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import engine  # noqa: E402
from bench.measure import (  # noqa: E402
    MB, Launcher, TreeMonitor, install_sigterm_as_interrupt, machine_info, markdown_table, median, write_results,
)

DIRECTORD_VERSION = "0.12.0"
DEFAULT_VENV = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "directord-accelerator" / "bench" / "directord-venv")
COMMAND = "echo hello world"
EXPECT = "hello world"
SUBMIT_TIMEOUT = 900.0
GOAL_SPEEDUP = 2.0  # at least this many times faster than Directord
GOAL_FLOOR_RATIO = 1.5  # at most this many times the spawn floor's wall time
GOAL_RSS_MB = 300.0  # server plus agents, peak total


class DirectordUnavailable(RuntimeError):
    """Directord could not be installed or run here; the text says why."""


@dataclass
class Measurement:
    """One contender's one run."""

    contender: str
    executions: int
    wall: float  # first submit -> last result
    cpu_cluster: float  # server + agents (+ their children) during the run
    cpu_client: float  # the submitting (or spawning) process, start-up included
    peak_rss_mb: float  # server + agents, summed VmRSS, during the run
    peak_pss_mb: float  # the same, with pages shared between processes counted once
    peak_processes: int
    client_peak_rss_mb: float
    startup: float | None = None  # starting the server -> every agent connected
    end_to_end: float | None = None  # starting the server -> last result

    @property
    def cpu_total(self) -> float:
        return self.cpu_cluster + self.cpu_client

    @property
    def rate(self) -> float:
        return self.executions / self.wall


@contextlib.contextmanager
def measured_session(name: str, keep: bool) -> Iterator[tuple[Launcher, TreeMonitor, Path]]:
    """A scratch directory, a monitor and a launcher; every process started is killed on exit."""
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


def run_client(launcher: Launcher, monitor: TreeMonitor, argv: list[str], env: dict[str, str] | None,
               has_cluster: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the submitting process to completion; its JSON report and the CPU spent meanwhile."""
    cluster_before = monitor.cpu_seconds("cluster") if has_cluster else 0.0
    if has_cluster:
        monitor.group("cluster").reset_peaks()
    popen = launcher.start("client", "client", argv, env=env, stdout=subprocess.PIPE)
    assert popen.stdout is not None
    output = popen.stdout.read().decode()
    code = launcher.wait(popen, timeout=SUBMIT_TIMEOUT)
    cluster_after = monitor.cpu_seconds("cluster") if has_cluster else 0.0
    if code != 0 or not output.strip():
        log = (launcher.log_dir / "client.log").read_text()[-3000:]
        raise RuntimeError(f"{argv[1]} exited {code}: {output.strip()}\n{log}")
    report = json.loads(output.strip().splitlines()[-1])
    return report, {"cluster": cluster_after - cluster_before, "client": monitor.cpu_seconds("client")}


def measurement(contender: str, report: dict[str, Any], cpu: dict[str, float], monitor: TreeMonitor,
                **extra: Any) -> Measurement:
    executions = report["ok"] + report["failed"] + report["wrong_output"]
    if report["failed"] or report["wrong_output"]:
        raise RuntimeError(f"{contender}: {report['failed']} failed, {report['wrong_output']} wrong output")
    cluster = monitor.group("cluster")
    return Measurement(
        contender=contender, executions=executions, wall=report["finished"] - report["started"],
        cpu_cluster=cpu["cluster"], cpu_client=cpu["client"], peak_rss_mb=cluster.peak_rss / MB,
        peak_pss_mb=cluster.peak_pss / MB, peak_processes=cluster.peak_processes,
        client_peak_rss_mb=monitor.group("client").peak_rss / MB, **extra)


# -- the contenders ------------------------------------------------------------------------


def run_accelerator(jobs: int, agents: int, keep: bool) -> Measurement:
    names = [f"agent{i:02d}" for i in range(1, agents + 1)]
    with measured_session("accelerator", keep) as (launcher, monitor, scratch):
        t0 = time.time()
        home = scratch / "server"
        endpoint = f"tcp://127.0.0.1:{engine.free_port()}"
        engine.enroll_agents(home, names, agent_homes=scratch)
        engine.start_server(launcher, home, endpoint)
        for name in names:
            engine.start_agent(launcher, home, endpoint, name, scratch / name)
        engine.wait_active(launcher, home, names)
        startup = time.time() - t0
        argv = [sys.executable, str(REPO / "bench" / "submit_accelerator.py"), "--home", str(home),
                "--jobs", str(jobs), "--command", COMMAND, "--expect", EXPECT,
                *(arg for name in names for arg in ("--target", name))]
        report, cpu = run_client(launcher, monitor, argv, engine.child_env())
        return measurement("accelerator", report, cpu, monitor, startup=startup, end_to_end=report["finished"] - t0)


def ensure_directord(venv: Path) -> Path:
    """The venv's python with directord[zmq]==0.12.0, created on first use."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import directord, zmq; print(directord.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == DIRECTORD_VERSION:
        return python
    print(f"installing directord {DIRECTORD_VERSION} into {venv} ...", file=sys.stderr)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", f"directord[zmq]=={DIRECTORD_VERSION}"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise DirectordUnavailable(f"`{' '.join(step)}` failed: {done.stderr.strip()[-1500:]}")
    found = subprocess.run(probe, capture_output=True, text=True)
    if found.stdout.strip() != DIRECTORD_VERSION:
        raise DirectordUnavailable(f"directord is not importable from {python}: {found.stderr.strip()[-1500:]}")
    return python


def directord_manage(socket_path: Path, request: dict[str, Any]) -> Any:
    """One request on Directord's manage socket (its protocol: JSON in, JSON out, then EOF)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_path))
        sock.sendall(json.dumps({"manage": request}).encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def directord_nodes(socket_path: Path) -> set[str]:
    try:
        return {name for name, _ in directord_manage(socket_path, {"list_nodes": None})}
    except (OSError, ValueError):
        return set()


def write_directord_config(path: Path, **settings: Any) -> Path:
    """Directord reads a YAML map whose keys override its CLI options; JSON is valid YAML."""
    path.write_text(json.dumps({"driver": "zeromq", "debug": False, **settings}, indent=2) + "\n")
    return path


def run_directord(jobs: int, agents: int, keep: bool, venv: Path) -> Measurement:
    python = ensure_directord(venv)
    directord = str(python.parent / "directord")
    names = [f"dnode{i:02d}" for i in range(1, agents + 1)]
    with measured_session("directord", keep) as (launcher, monitor, scratch):
        t0 = time.time()
        sock = scratch / "directord.sock"
        common = {"job_port": engine.free_port(), "backend_port": engine.free_port(), "socket_path": str(sock)}
        server_conf = write_directord_config(scratch / "server.yaml", zmq_bind_address="127.0.0.1",
                                             cache_path=str(scratch / "server-cache"), **common)
        launcher.start("cluster", "server", [directord, "--config-file", str(server_conf), "server"])
        engine.wait_until("directord server start", sock.exists, launcher.all_running)
        for index, name in enumerate(names):
            conf = write_directord_config(scratch / f"{name}.yaml", zmq_server_address="127.0.0.1",
                                          identity=name, machine_id=f"bench-machine-{index:04d}",
                                          cache_path=str(scratch / f"{name}-cache"), **common)
            launcher.start("cluster", f"client-{name}", [directord, "--config-file", str(conf), "client"])
        engine.wait_until(f"{agents} directord clients", lambda: set(names) <= directord_nodes(sock),
                          launcher.all_running, interval=0.1)
        startup = time.time() - t0
        argv = [str(python), str(REPO / "bench" / "submit_directord.py"), "--socket-path", str(sock),
                "--jobs", str(jobs), "--command", COMMAND, "--expect", EXPECT,
                "--timeout", str(SUBMIT_TIMEOUT), *(arg for name in names for arg in ("--target", name))]
        report, cpu = run_client(launcher, monitor, argv, env=None)
        return measurement("directord", report, cpu, monitor, startup=startup, end_to_end=report["finished"] - t0)


def run_floor(spawns: int, keep: bool) -> Measurement:
    with measured_session("floor", keep) as (launcher, monitor, _):
        argv = [sys.executable, str(REPO / "bench" / "spawn_floor.py"), "--spawns", str(spawns),
                "--command", COMMAND, "--expect", EXPECT]
        report, cpu = run_client(launcher, monitor, argv, env=None, has_cluster=False)
        return measurement("floor", report, cpu, monitor)


# -- report --------------------------------------------------------------------------------


def summarize(runs: list[Measurement]) -> dict[str, Any]:
    """Medians over runs of every figure the report shows."""
    def med(value: Any) -> float | None:
        values = [value(m) for m in runs]
        return None if any(v is None for v in values) else median(values)

    return {
        "runs": len(runs), "executions": runs[0].executions,
        "wall": med(lambda m: m.wall), "rate": med(lambda m: m.rate),
        "cpu_total": med(lambda m: m.cpu_total), "cpu_cluster": med(lambda m: m.cpu_cluster),
        "cpu_client": med(lambda m: m.cpu_client), "peak_rss_mb": med(lambda m: m.peak_rss_mb),
        "peak_pss_mb": med(lambda m: m.peak_pss_mb), "peak_processes": med(lambda m: m.peak_processes),
        "client_peak_rss_mb": med(lambda m: m.client_peak_rss_mb),
        "startup": med(lambda m: m.startup), "end_to_end": med(lambda m: m.end_to_end),
    }


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours = summary.get("accelerator")
    if not ours:
        return {}
    result: dict[str, Any] = {"rss_mb": ours["peak_rss_mb"], "rss_goal_met": ours["peak_rss_mb"] < GOAL_RSS_MB}
    if "directord" in summary:
        speedup = summary["directord"]["wall"] / ours["wall"]
        result.update(speedup_vs_directord=speedup, speedup_goal_met=speedup >= GOAL_SPEEDUP,
                      cpu_ratio_vs_directord=summary["directord"]["cpu_total"] / ours["cpu_total"])
    if "floor" in summary:
        over = ours["wall"] / summary["floor"]["wall"]
        result.update(wall_vs_floor=over, floor_goal_met=over <= GOAL_FLOOR_RATIO,
                      cpu_vs_floor=ours["cpu_total"] / summary["floor"]["cpu_total"])
    return result


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report_text(summary: dict[str, dict[str, Any]], found: dict[str, Any], skipped: dict[str, str]) -> str:
    headers = ["contender", "executions", "wall s", "exec/s", "CPU s total", "CPU s server+agents",
               "CPU s client", "peak RSS server+agents MB", "peak PSS MB", "processes", "client RSS MB",
               "start-up s", "end-to-end s"]
    rows = [[name, s["executions"], fmt(s["wall"]), fmt(s["rate"], 0), fmt(s["cpu_total"]), fmt(s["cpu_cluster"]),
             fmt(s["cpu_client"]), fmt(s["peak_rss_mb"], 1) if name != "floor" else "-",
             fmt(s["peak_pss_mb"], 1) if name != "floor" else "-",
             fmt(s["peak_processes"], 0) if name != "floor" else "-", fmt(s["client_peak_rss_mb"], 1),
             fmt(s["startup"]), fmt(s["end_to_end"])]
            for name, s in summary.items()]
    lines = [markdown_table(headers, rows), ""]
    if "speedup_vs_directord" in found:
        lines.append(f"- speed-up vs Directord: {found['speedup_vs_directord']:.2f}x (goal >= {GOAL_SPEEDUP}x: "
                     f"{'met' if found['speedup_goal_met'] else 'MISSED'}); CPU: Directord used "
                     f"{found['cpu_ratio_vs_directord']:.2f}x ours")
    if "wall_vs_floor" in found:
        lines.append(f"- wall vs spawn floor: {found['wall_vs_floor']:.2f}x (goal <= {GOAL_FLOOR_RATIO}x: "
                     f"{'met' if found['floor_goal_met'] else 'MISSED'}); CPU vs floor: {found['cpu_vs_floor']:.2f}x")
    if "rss_mb" in found:
        lines.append(f"- server+agents peak RSS: {found['rss_mb']:.1f} MB (goal < {GOAL_RSS_MB:.0f} MB: "
                     f"{'met' if found['rss_goal_met'] else 'MISSED'})")
    lines += [f"- {name} not run: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="repetitions of each contender (medians reported)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs, each aimed at every agent")
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--skip-directord", action="store_true")
    parser.add_argument("--directord-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--keep", action="store_true", help="keep scratch directories and logs")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    install_sigterm_as_interrupt()

    contenders = {
        "accelerator": lambda: run_accelerator(args.jobs, args.agents, args.keep),
        "directord": lambda: run_directord(args.jobs, args.agents, args.keep, args.directord_venv),
        "floor": lambda: run_floor(args.jobs * args.agents, args.keep),
    }
    skipped = {"directord": "--skip-directord"} if args.skip_directord else {}
    measured: dict[str, list[Measurement]] = {name: [] for name in contenders if name not in skipped}
    info = machine_info()
    for run in range(1, args.runs + 1):
        for name in list(measured):
            print(f"run {run}/{args.runs}: {name} ...", file=sys.stderr, flush=True)
            try:
                result = contenders[name]()
            except DirectordUnavailable as exc:
                skipped[name] = str(exc)
                del measured[name]
                continue
            measured[name].append(result)
            print(f"  {result.executions} executions in {result.wall:.2f} s, CPU {result.cpu_total:.2f} s, "
                  f"peak RSS {result.peak_rss_mb:.1f} MB", file=sys.stderr, flush=True)
    summary = {name: summarize(runs) for name, runs in measured.items() if runs}
    found = ratios(summary)
    print(f"\n{args.jobs} x RUN `{COMMAND}` on {args.agents} agents; {info['nproc']} x {info['cpu_model']}, "
          f"Python {info['python']}, {info['date']}; medians of {args.runs} run(s)\n")
    print(report_text(summary, found, skipped))
    path = write_results(args.results, "engine_run", {
        "machine": info, "options": {k: str(v) for k, v in vars(args).items()}, "command": COMMAND,
        "summary": summary, "ratios": found, "skipped": skipped,
        "runs": {name: [{**asdict(m), "cpu_total": m.cpu_total, "rate": m.rate} for m in runs]
                 for name, runs in measured.items()},
    })
    print(f"\nresults: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
