"""1,000 RUN jobs (`echo hello world`) on 10 agents: Accelerator vs Directord 0.12.0 vs the spawn floor.

Why: the point of the engine is to run many small tasks across hosts with little overhead, and
Directord (what it replaces) is the reference.  Three contenders run one after the other on
this machine, each measured the same way (bench/measure.py: wall time, CPU of every process
involved including the submitting client, peak summed RSS of the server and agents):

- accelerator: a Curve-secured server and N agents (separate processes, own homes); a client
  process submits the jobs, each aimed at every agent, in one request (or in requests of --batch
  jobs), and waits for every result.  Timed from first submit to last result with all agents already connected (the warm
  steady state); the end-to-end time from starting the server is reported beside it.
- directord: Directord 0.12.0 from PyPI in its own virtualenv, zeromq driver (unencrypted: its
  Curve mode needs keys under /etc/directord), one server and N clients with their own
  identities, machine ids and cache paths; the jobs go in as one orchestration (bench/submit_directord.py).
- floor: jobs x agents sequential `sh -c` spawns from one fresh Python process (bench/spawn_floor.py).

Usage: python bench/engine_run.py [--runs N] [--jobs 1000] [--agents 10] [--batch N]
                                  [--contenders accelerator,directord,floor]
Prints a markdown table and writes bench/results/engine_run-STAMP.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import engine
from bench.measure import (
    MB,
    Launcher,
    TreeMonitor,
    engine_revision,
    install_interrupt_handlers,
    machine_info,
    markdown_table,
    measured_session,
    median,
    system_busy_seconds,
    wait_for_idle,
    write_results,
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
    failed: int  # results that were not a success with the expected output (lost, failed, wrong)
    wall: float  # first submit -> last result
    submit: float  # first submit -> the server's reply to the last submit request
    cpu_cluster: float  # server + agents (+ their children) during the run
    cpu_client: float  # the submitting (or spawning) process, start-up included
    peak_rss_mb: float  # server + agents, summed VmRSS, during the run
    peak_pss_mb: float  # the same, with pages shared between processes counted once
    peak_processes: int
    server_rss_mb: float | None  # peak of the server process with its children
    agent_rss_mb: float | None  # the largest agent's peak, with its children
    client_peak_rss_mb: float
    sampler_cpu: float  # this script's own CPU meanwhile (mostly the /proc sampler)
    other_cpu: float  # CPU the rest of the machine used meanwhile (other sessions' work, kernel threads)
    startup: float | None = None  # starting the server -> every agent connected
    end_to_end: float | None = None  # starting the server -> last result

    @property
    def cpu_total(self) -> float:
        return self.cpu_cluster + self.cpu_client

    @property
    def rate(self) -> float:
        return self.executions / self.wall


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_client(launcher: Launcher, monitor: TreeMonitor, argv: list[str], env: dict[str, str] | None,
               has_cluster: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the submitting process to completion; its JSON report and the CPU spent meanwhile."""
    busy_before, self_before = system_busy_seconds(), own_cpu_seconds()
    cluster_before = monitor.cpu_seconds("cluster") if has_cluster else 0.0
    if has_cluster:
        monitor.group("cluster").reset_peaks()
    popen = launcher.start("client", "client", argv, env=env, stdout=subprocess.PIPE)
    assert popen.stdout is not None
    code = launcher.wait(popen, timeout=SUBMIT_TIMEOUT)  # its one JSON line fits in the pipe buffer
    output = popen.stdout.read().decode()
    popen.stdout.close()
    cluster_after = monitor.cpu_seconds("cluster") if has_cluster else 0.0
    busy, sampler = system_busy_seconds() - busy_before, own_cpu_seconds() - self_before
    if not output.strip():  # no report at all; failed jobs are reported, not raised
        log = (launcher.log_dir / "client.log").read_text()[-3000:]
        raise RuntimeError(f"{Path(argv[1]).name} exited {code} without a report:\n{log}")
    report = json.loads(output.strip().splitlines()[-1])
    cpu = {"cluster": cluster_after - cluster_before, "client": monitor.cpu_seconds("client")}
    return report, {**cpu, "sampler": sampler, "other": busy - sampler - cpu["cluster"] - cpu["client"]}


def measurement(contender: str, report: dict[str, Any], cpu: dict[str, float], monitor: TreeMonitor,
                **extra: Any) -> Measurement:
    failed = report["failed"] + report["wrong_output"]
    cluster = monitor.group("cluster")
    trees = cluster.named_peaks()
    agents = [size for name, size in trees.items() if name != "server"]
    return Measurement(
        contender=contender, executions=report["ok"] + failed, failed=failed,
        wall=report["finished"] - report["started"], submit=report["submitted"] - report["started"],
        cpu_cluster=cpu["cluster"], cpu_client=cpu["client"], peak_rss_mb=cluster.peak_rss / MB,
        peak_pss_mb=cluster.peak_pss / MB, peak_processes=cluster.peak_processes,
        server_rss_mb=trees["server"] / MB if "server" in trees else None,
        agent_rss_mb=max(agents) / MB if agents else None,
        client_peak_rss_mb=monitor.group("client").peak_rss / MB,
        sampler_cpu=cpu["sampler"], other_cpu=cpu["other"], **extra)


# -- the contenders ------------------------------------------------------------------------


def run_accelerator(jobs: int, agents: int, keep: bool, batch: int) -> Measurement:
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
                "--jobs", str(jobs), "--batch", str(batch), "--command", COMMAND, "--expect", EXPECT,
                *(arg for name in names for arg in ("--target", name))]
        report, cpu = run_client(launcher, monitor, argv, engine.child_env())
        return measurement("accelerator", report, cpu, monitor, startup=startup,
                           end_to_end=report["finished"] - t0)


def ensure_directord(venv: Path) -> Path:
    """The venv's python with directord[zmq]==0.12.0, created on first use."""
    python = venv / "bin" / "python"
    def installed() -> str:
        probe = [str(python), "-c", "import directord, zmq; print(directord.__version__)"]
        return subprocess.run(probe, check=False, capture_output=True, text=True).stdout.strip()

    if python.exists() and installed() == DIRECTORD_VERSION:
        return python
    print(f"installing directord {DIRECTORD_VERSION} into {venv} ...", file=sys.stderr)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", f"directord[zmq]=={DIRECTORD_VERSION}"]]
    for step in steps:
        done = subprocess.run(step, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise DirectordUnavailable(f"`{' '.join(step)}` failed: {done.stderr.strip()[-1500:]}")
    if installed() != DIRECTORD_VERSION:
        raise DirectordUnavailable(f"directord {DIRECTORD_VERSION} with pyzmq is not importable from {python}")
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
        return measurement("directord", report, cpu, monitor, startup=startup,
                           end_to_end=report["finished"] - t0)


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
        "runs": len(runs), "executions": runs[0].executions, "failed": sum(m.failed for m in runs),
        "wall": med(lambda m: m.wall), "submit": med(lambda m: m.submit), "rate": med(lambda m: m.rate),
        "cpu_total": med(lambda m: m.cpu_total), "cpu_cluster": med(lambda m: m.cpu_cluster),
        "cpu_client": med(lambda m: m.cpu_client), "peak_rss_mb": med(lambda m: m.peak_rss_mb),
        "peak_pss_mb": med(lambda m: m.peak_pss_mb), "peak_processes": med(lambda m: m.peak_processes),
        "server_rss_mb": med(lambda m: m.server_rss_mb), "agent_rss_mb": med(lambda m: m.agent_rss_mb),
        "client_peak_rss_mb": med(lambda m: m.client_peak_rss_mb),
        "startup": med(lambda m: m.startup), "end_to_end": med(lambda m: m.end_to_end),
        "sampler_cpu": med(lambda m: m.sampler_cpu), "other_cpu": med(lambda m: m.other_cpu),
    }


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours = summary.get("accelerator")
    if not ours:
        return {}
    valid = ours["failed"] == 0  # a run that lost results meets no goal, however fast
    result: dict[str, Any] = {"rss_mb": ours["peak_rss_mb"],
                              "rss_goal_met": valid and ours["peak_rss_mb"] < GOAL_RSS_MB}
    if "directord" in summary:
        speedup = summary["directord"]["wall"] / ours["wall"]
        result.update(speedup_vs_directord=speedup, speedup_goal_met=valid and speedup >= GOAL_SPEEDUP,
                      cpu_ratio_vs_directord=summary["directord"]["cpu_total"] / ours["cpu_total"])
    if "floor" in summary:
        over = ours["wall"] / summary["floor"]["wall"]
        result.update(wall_vs_floor=over, floor_goal_met=valid and over <= GOAL_FLOOR_RATIO,
                      cpu_vs_floor=ours["cpu_total"] / summary["floor"]["cpu_total"])
    return result


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report_text(summary: dict[str, dict[str, Any]], found: dict[str, Any], skipped: dict[str, str],
                errors: list[str]) -> str:
    time_rows = [[name, s["executions"], s["failed"], fmt(s["wall"]), fmt(s["submit"]), fmt(s["rate"], 0),
                  fmt(s["cpu_total"]), fmt(s["cpu_cluster"]), fmt(s["cpu_client"]), fmt(s["startup"]),
                  fmt(s["end_to_end"]), fmt(s["sampler_cpu"]), fmt(s["other_cpu"])]
                 for name, s in summary.items()]
    memory_rows = [[name, fmt(s["peak_rss_mb"], 1), fmt(s["peak_pss_mb"], 1), fmt(s["peak_processes"], 0),
                    fmt(s["server_rss_mb"], 1), fmt(s["agent_rss_mb"], 1), fmt(s["client_peak_rss_mb"], 1)]
                   for name, s in summary.items() if name != "floor"]
    lines = [
        markdown_table(["contender", "executions", "failed", "wall s", "submit s", "exec/s", "CPU s total",
                        "CPU s server+agents", "CPU s client", "start-up s", "end-to-end s", "sampler CPU s",
                        "other CPU s"], time_rows), "",
        markdown_table(["contender", "peak RSS server+agents MB", "peak PSS MB", "processes", "server MB",
                        "largest agent MB", "client MB"], memory_rows), "",
    ]
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
    lines.append("- submit s: first submit -> the reply to the last submit request; for floor it is 0")
    lines.append("- sampler CPU s: this script's own CPU during the run (the /proc sampler); other CPU s: the rest "
                 "of the machine's busy time (other work); large values mean disturbed figures")
    lines += [f"- {name} not run: {reason}" for name, reason in skipped.items()]
    lines += [f"- {name}: {s['failed']} results failed or were lost: no goal counts as met"
              for name, s in summary.items() if s["failed"]]
    lines += [f"- error: {error}" for error in errors]
    return "\n".join(lines)


CONTENDERS = ("accelerator", "directord", "floor")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="repetitions of each contender (medians reported)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs, each aimed at every agent")
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--batch", type=int, default=0,
                        help="accelerator: jobs per SUBMIT request (default 0: all jobs in one request)")
    parser.add_argument("--contenders", type=lambda text: text.split(","), default=list(CONTENDERS),
                        help="comma-separated subset of " + ",".join(CONTENDERS))
    parser.add_argument("--directord-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--keep", action="store_true", help="keep scratch directories and logs")
    parser.add_argument("--idle-wait", type=float, default=60.0,
                        help="before each measurement, wait up to this many seconds for the machine to be idle")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    return args


def measure_all(args: argparse.Namespace) -> tuple[dict[str, list[Measurement]], dict[str, str], list[str]]:
    """Every selected contender, --runs times, in turn; (measurements, skipped with why, errors)."""
    contenders: dict[str, Callable[[], Measurement]] = {
        "accelerator": lambda: run_accelerator(args.jobs, args.agents, args.keep, args.batch),
        "directord": lambda: run_directord(args.jobs, args.agents, args.keep, args.directord_venv),
        "floor": lambda: run_floor(args.jobs * args.agents, args.keep),
    }
    skipped = {name: "not selected (--contenders)" for name in CONTENDERS if name not in args.contenders}
    measured: dict[str, list[Measurement]] = {name: [] for name in CONTENDERS if name not in skipped}
    errors: list[str] = []
    for run in range(1, args.runs + 1):
        for name in list(measured):
            busy = wait_for_idle(args.idle_wait)
            print(f"run {run}/{args.runs}: {name} (machine busy before: {busy:.2f} cores) ...",
                  file=sys.stderr, flush=True)
            try:
                result = contenders[name]()
            except DirectordUnavailable as exc:
                skipped[name] = str(exc)
                del measured[name]
                continue
            except (RuntimeError, TimeoutError) as exc:
                errors.append(f"{name}, run {run}: {exc}")
                print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            measured[name].append(result)
            print(f"  {result.executions} executions ({result.failed} failed) in {result.wall:.2f} s, "
                  f"CPU {result.cpu_total:.2f} s, peak RSS {result.peak_rss_mb:.1f} MB", file=sys.stderr, flush=True)
    return measured, skipped, errors


def main() -> int:
    args = parse_args()
    install_interrupt_handlers()
    info = {**machine_info(), "engine_revision": engine_revision(REPO)}
    measured, skipped, errors = measure_all(args)
    if engine_revision(REPO) != info["engine_revision"]:
        errors.append(f"the engine changed during the runs (from {info['engine_revision']} to "
                      f"{engine_revision(REPO)}): figures mix versions")
    summary = {name: summarize(runs) for name, runs in measured.items() if runs}
    found = ratios(summary)
    print(f"\n{args.jobs} x RUN `{COMMAND}` on {args.agents} agents; {info['nproc']} x {info['cpu_model']}, "
          f"Python {info['python']}, {info['date']}, engine {info['engine_revision']}; "
          f"medians of {args.runs} run(s)\n")
    print(report_text(summary, found, skipped, errors))
    path = write_results(args.results, "engine_run", {
        "machine": info, "options": {k: str(v) for k, v in vars(args).items()}, "command": COMMAND,
        "summary": summary, "ratios": found, "skipped": skipped, "errors": errors,
        "runs": {name: [{**asdict(m), "cpu_total": m.cpu_total, "rate": m.rate} for m in runs]
                 for name, runs in measured.items()},
    })
    print(f"\nresults: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 1 if errors or any(s["failed"] for s in summary.values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
