"""WAIT: pause, or poll a URL or a command until it succeeds, before the next job of the parent.

Orchestrations use it to let a service come up between "start it" and "use it".  Waiting
changes nothing on the target, so the result is never `changed`.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerator.components.base import Component, ComponentError, ExecContext, Parsed
from accelerator.components.process import run_command
from accelerator.model import JobResult, JobState

DEFAULT_RETRY = 10
DEFAULT_RETRY_WAIT = 1.0
Probe = Callable[[], tuple[bool, str]]  # one attempt: (succeeded, what happened)


class Wait(Component):
    verb = "WAIT"
    help = "Sleep, or retry until a URL answers 2xx/3xx or a command exits 0."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        condition = parser.add_mutually_exclusive_group(required=True)
        condition.add_argument("--seconds", type=float, help="just wait this long")
        condition.add_argument("--url", help="HTTP GET until the status is 2xx or 3xx")
        condition.add_argument("--cmd", help="run with /bin/sh until it exits 0")
        parser.add_argument("--retry", type=int, default=DEFAULT_RETRY, help="attempts after the first one")
        parser.add_argument("--retry-wait", type=float, default=DEFAULT_RETRY_WAIT, help="seconds between attempts")

    def finish(self, args: dict[str, Any], base_dir: Path) -> Parsed:
        for name in ("seconds", "retry", "retry_wait"):
            if args[name] is not None and args[name] < 0:
                raise ComponentError(f"WAIT: --{name.replace('_', '-')} must not be negative")
        return Parsed(args=args)

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        if args.get("seconds") is not None:
            time.sleep(args["seconds"])
            return _result(JobState.SUCCESS, started, f"waited {args['seconds']} s", attempts=1)
        try:
            what, probe = _probe(args, ctx)
        except ComponentError as exc:
            return JobResult.failure(str(exc))
        return _poll(what, probe, args["retry"], args["retry_wait"], started)


def _probe(args: dict[str, Any], ctx: ExecContext) -> tuple[str, Probe]:
    """The condition to poll, with {{ variables }} expanded as RUN does."""
    if args.get("url"):
        url = ctx.render(args["url"])
        return f"URL {url}", lambda: _get_url(url)
    command = ctx.render(args["cmd"])
    env = {**os.environ, **ctx.environment}
    return f"command {command!r}", lambda: _run(command, env)


def _poll(what: str, probe: Probe, retry: int, retry_wait: float, started: float) -> JobResult:
    attempts = retry + 1
    detail = ""
    for attempt in range(1, attempts + 1):
        succeeded, detail = probe()
        if succeeded:
            return _result(JobState.SUCCESS, started, detail, attempts=attempt)
        if attempt < attempts:
            time.sleep(retry_wait)
    error = f"WAIT: {what} did not succeed after {attempts} attempts; last error: {detail}"
    return _result(JobState.FAILED, started, "", attempts=attempts, error=error)


def _get_url(url: str) -> tuple[bool, str]:
    # urllib pulls in http.client and email (several MB); only agents that probe URLs pay for it.
    from accelerator.components.http_probe import get_url

    return get_url(url)


def _run(command: str, env: dict[str, str]) -> tuple[bool, str]:
    outcome = run_command(["/bin/sh", "-c", command], env)
    return outcome.ok, outcome.stdout.strip() if outcome.ok else outcome.describe()


def _result(state: JobState, started: float, stdout: str, *, attempts: int, error: str = "") -> JobResult:
    return JobResult(
        state=state, rc=0 if state is JobState.SUCCESS else None, stdout=stdout, stderr=error, error=error,
        changed=False, started=started, ended=time.time(), data={"attempts": attempts},
    )
