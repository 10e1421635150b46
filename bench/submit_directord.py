"""Submit N RUN jobs to a running Directord 0.12.0 server and wait for every result.

Runs under the Directord virtualenv's interpreter (bench/engine_run.py creates it), never under
the project's own: it imports only `directord` and the standard library.  Submission goes through
`directord.mixin.Mixin.exec_orchestrations`, the code path behind both `directord orchestrate`
and the `DirectordConnect.orchestrate` library call, with one orchestration of N jobs, so no CLI
start-up is measured.  `ignore_cache` is set: Directord skips a job whose content hash it has
already run on a client, and 1,000 identical `echo` jobs would otherwise run only once each.

Completion is polled through the server's manage socket (what `directord manage` uses): first the
last job, then the full job list to check every (job, client) result.  The reported end time is
the server's own record of the last result (`_lasttime`), so the polling interval does not
inflate the wall time.  Prints one JSON line like bench/submit_accelerator.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from types import SimpleNamespace
from typing import Any

import directord
from directord import mixin

JOB_END = "\x04"
JOB_FAILED = "\x15"
POLL_INTERVAL = 0.25  # what `directord exec --wait` uses between polls


def manage(socket_path: str, request: dict[str, Any]) -> Any:
    return json.loads(directord.send_data(socket_path=socket_path, data=json.dumps({"manage": request})))


def submit(socket_path: str, command: str, jobs: int, targets: list[str]) -> list[str]:
    args = SimpleNamespace(debug=False, socket_path=socket_path, driver="zeromq", force_async=False,
                           identity=None, finger_print=False)
    orchestration = {"jobs": [{"RUN": command} for _ in range(jobs)]}
    returned = mixin.Mixin(args=args).exec_orchestrations(
        orchestrations=[orchestration], defined_targets=targets, ignore_cache=True, return_raw=True)
    return [item.decode() for item in returned]


def finished_count(info: dict[str, Any]) -> int:
    return sum(1 for state in info.get("_processing", {}).values() if state in (JOB_END, JOB_FAILED))


def wait_for(socket_path: str, job_ids: list[str], targets: int, timeout: float) -> dict[str, Any]:
    """Poll until every job has a final state on every target; return the job listing."""
    deadline = time.monotonic() + timeout
    last = job_ids[-1]
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Directord did not finish {len(job_ids)} jobs within {timeout} s")
        found = dict(manage(socket_path, {"job_info": last}))
        if last in found and finished_count(found[last]) >= targets:
            listing = dict(manage(socket_path, {"list_jobs": None}))
            if all(finished_count(listing.get(job, {})) >= targets for job in job_ids):
                return listing
        time.sleep(POLL_INTERVAL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket-path", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--command", default="echo hello world")
    parser.add_argument("--expect", default="hello world", help="the stdout every result must have")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    started = time.time()
    job_ids = submit(args.socket_path, args.command, args.jobs, args.target)
    submitted = time.time()
    listing = wait_for(args.socket_path, job_ids, len(args.target), args.timeout)
    jobs = [listing[job] for job in job_ids]
    ok = sum(len(job["SUCCESS"]) for job in jobs)
    failed = sum(len(job["FAILED"]) for job in jobs)
    wrong_output = sum(1 for job in jobs for node in job["SUCCESS"] if job["STDOUT"].get(node) != args.expect)
    print(json.dumps({"started": started, "submitted": submitted,
                      "finished": max(job["_lasttime"] for job in jobs),
                      "ok": ok, "failed": failed, "wrong_output": wrong_output}))
    return 0 if failed == 0 and wrong_output == 0 and ok == len(job_ids) * len(args.target) else 1


if __name__ == "__main__":
    sys.exit(main())
