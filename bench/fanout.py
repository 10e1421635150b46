"""Fan-out of one no-op job to 1,000 simulated agents: how long until every result is back.

Why: a task of an Ansible play goes to every host at once, so the server's cost of sending one
job to many agents and collecting their results bounds how large an inventory one server can
drive.  One real, Curve-secured server process; one simulator process holding 1,000 DEALER
sockets, each with its own enrolled key pair (bench/agent_simulator.py), answering every JOB
at once; the client (this process) submits one RUN `true` aimed at all of them once all are
active, and times submit -> last result.  Every run starts a fresh server and simulator.

Usage: python bench/fanout.py [--agents 1000] [--runs 3]
Prints a markdown table and writes bench/results/fanout-STAMP.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from accelerator import components
from accelerator.client import Client
from accelerator.model import JobSpec
from bench import engine
from bench.measure import (
    MB,
    engine_revision,
    install_interrupt_handlers,
    machine_info,
    markdown_table,
    measured_session,
    median,
    wait_for_idle,
    write_results,
)

CONNECT_TIMEOUT = 300.0
FANOUT_TIMEOUT = 120.0
GOAL_SECONDS = 1.0
GOAL_RSS_MB = 300.0


@dataclass
class FanoutRun:
    agents: int
    connect: float  # simulator started -> every agent active on the server
    fanout: float  # submit -> last result at the client
    submit: float  # submit -> the server's reply (all JOB messages queued)
    server_cpu: float  # server CPU during the fan-out
    server_peak_rss_mb: float  # over the whole run, connection storm included
    simulator_peak_rss_mb: float
    ok: int


def write_keys(path: Path, pairs: dict[str, tuple[str, str]]) -> None:
    """The simulator's secret keys, readable by us only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(pairs, handle)


def fan_out(home: Path, names: list[str]) -> tuple[float, float, int]:
    """Submit one RUN `true` to every agent; (seconds to the reply, seconds to the last result, ok count)."""
    run = components.get("RUN")
    spec = JobSpec(verb=run.verb, args=run.parse("true").args, targets=list(names), label="RUN true")
    with Client(home, timeout=FANOUT_TIMEOUT) as client:
        started = time.perf_counter()
        accepted = client.submit([spec])
        replied = time.perf_counter()
        expected = {job["id"]: set(job["targets"]) for job in accepted}
        ok = sum(1 for outcome in client.results(expected, timeout=FANOUT_TIMEOUT) if outcome.result.ok)
        finished = time.perf_counter()
    return replied - started, finished - started, ok


def run_once(agents: int, keep: bool) -> FanoutRun:
    with measured_session("fanout", keep) as (launcher, monitor, scratch):
        names = [f"sim{i:04d}" for i in range(agents)]
        home = scratch / "server"
        endpoint = f"tcp://127.0.0.1:{engine.free_port()}"
        pairs = engine.enroll_agents(home, names)
        write_keys(scratch / "simulator-keys.json", {name: (p.public, p.secret) for name, p in pairs.items()})
        engine.start_server(launcher, home, endpoint, group="server")
        started = time.monotonic()
        launcher.start("simulator", "simulator", [
            sys.executable, str(REPO / "bench" / "agent_simulator.py"), "--server", endpoint,
            "--server-key", (home / "keys" / "server.pub").read_text().strip(),
            "--keys", str(scratch / "simulator-keys.json")], env=engine.child_env())
        engine.wait_active(launcher, home, names, timeout=CONNECT_TIMEOUT)
        connect = time.monotonic() - started
        cpu_before = monitor.cpu_seconds("server")
        submit, fanout, ok = fan_out(home, names)
        server_cpu = monitor.cpu_seconds("server") - cpu_before
        monitor.sample()
        return FanoutRun(agents=agents, connect=connect, fanout=fanout, submit=submit, server_cpu=server_cpu,
                         server_peak_rss_mb=monitor.group("server").peak_rss / MB,
                         simulator_peak_rss_mb=monitor.group("simulator").peak_rss / MB, ok=ok)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="fresh server and simulator each; median reported")
    parser.add_argument("--keep", action="store_true", help="keep scratch directories and logs")
    parser.add_argument("--idle-wait", type=float, default=60.0,
                        help="before each run, wait up to this many seconds for the machine to be idle")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    return parser.parse_args()


def report(runs: list[FanoutRun], info: dict[str, Any], args: argparse.Namespace) -> Path:
    """Print the table and the verdicts; write the JSON results."""
    fanout = median(r.fanout for r in runs)
    rss = max(r.server_peak_rss_mb for r in runs)
    rows = [[i, f"{r.connect:.2f}", f"{r.submit:.3f}", f"{r.fanout:.3f}", f"{r.server_cpu:.2f}",
             f"{r.server_peak_rss_mb:.1f}", f"{r.simulator_peak_rss_mb:.1f}"] for i, r in enumerate(runs, 1)]
    print(f"\nOne RUN `true` to {args.agents} simulated agents (Curve); {info['nproc']} x {info['cpu_model']}, "
          f"Python {info['python']}, {info['date']}, engine {info['engine_revision']}\n")
    print(markdown_table(["run", "all active s", "submit reply s", "fan-out s", "server CPU s",
                          "server peak RSS MB", "simulator RSS MB"], rows))
    print(f"\n- fan-out, median of {len(runs)}: {fanout:.3f} s (goal < {GOAL_SECONDS:.0f} s: "
          f"{'met' if fanout < GOAL_SECONDS else 'MISSED'})")
    print(f"- server peak RSS, worst run: {rss:.1f} MB (goal < {GOAL_RSS_MB:.0f} MB: "
          f"{'met' if rss < GOAL_RSS_MB else 'MISSED'})")
    return write_results(args.results, "fanout", {
        "machine": info, "options": {k: str(v) for k, v in vars(args).items()},
        "median_fanout": fanout, "worst_server_peak_rss_mb": rss,
        "goals_met": {"fanout": fanout < GOAL_SECONDS, "rss": rss < GOAL_RSS_MB},
        "runs": [asdict(r) for r in runs],
    })


def main() -> int:
    args = parse_args()
    install_interrupt_handlers()
    info = {**machine_info(), "engine_revision": engine_revision(REPO)}
    runs = []
    for number in range(1, args.runs + 1):
        busy = wait_for_idle(args.idle_wait)
        print(f"run {number}/{args.runs}: {args.agents} simulated agents (machine busy before: {busy:.2f} cores) ...",
              file=sys.stderr, flush=True)
        result = run_once(args.agents, args.keep)
        if result.ok != args.agents:
            raise SystemExit(f"only {result.ok} of {args.agents} results were successes")
        print(f"  connected in {result.connect:.2f} s, fan-out {result.fanout:.3f} s, "
              f"server peak RSS {result.server_peak_rss_mb:.1f} MB", file=sys.stderr, flush=True)
        runs.append(result)
    if engine_revision(REPO) != info["engine_revision"]:
        print(f"WARNING: the engine changed during the runs (from {info['engine_revision']} to "
              f"{engine_revision(REPO)}): figures mix versions", file=sys.stderr)
    path = report(runs, info, args)
    print(f"\nresults: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
