"""Submit N RUN jobs to a running Accelerator server and wait for every result.

Run as its own process by bench/engine_run.py, so that the submitting client's CPU time and
memory are measured like every other process, and the benchmark's own sampling thread is not.
Prints one JSON line: wall-clock stamps (time.time(), comparable across processes on this
machine) of the first submit and of the last result, and the result counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerator import components
from accelerator.client import Client
from accelerator.model import JobSpec


def build_specs(command: str, jobs: int, targets: list[str]) -> list[JobSpec]:
    """The jobs `directord exec --verb RUN COMMAND` would build, each aimed at every target."""
    run = components.get("RUN")
    parsed = run.parse(command)
    return [JobSpec(verb=run.verb, args=dict(parsed.args), targets=list(targets), label=f"RUN {command}")
            for _ in range(jobs)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, required=True, help="the server's home (control socket)")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--command", default="echo hello world")
    parser.add_argument("--expect", default="hello world", help="the stdout (stripped) every result must have")
    parser.add_argument("--batch", type=int, default=0, help="jobs per SUBMIT request (default: all in one)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    specs = build_specs(args.command, args.jobs, args.target)
    size = args.batch or len(specs)
    with Client(args.home, timeout=60.0) as client:
        started = time.time()
        accepted = [job for first in range(0, len(specs), size) for job in client.submit(specs[first:first + size])]
        submitted = time.time()
        expected = {job["id"]: set(job["targets"]) for job in accepted}
        ok = failed = wrong_output = 0
        for outcome in client.results(expected, timeout=args.timeout):
            if outcome.result.ok:
                ok += 1
                if outcome.result.stdout.strip() != args.expect:
                    wrong_output += 1
            else:
                failed += 1
        finished = time.time()
    print(json.dumps({"started": started, "submitted": submitted, "finished": finished,
                      "ok": ok, "failed": failed, "wrong_output": wrong_output}))
    return 0 if failed == 0 and wrong_output == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
