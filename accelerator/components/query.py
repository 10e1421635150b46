"""QUERY: collect one variable from every target and hand the whole map to all of them.

A barrier: each agent reports its own value, the server waits for every target (or for its
loss), then sends the map back; afterwards `{{ query.KEY.AGENT }}` works on every target.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from accelerator.components.base import Component, ExecContext
from accelerator.model import JobResult, JobState

DEFAULT_QUERY_TIMEOUT = 600.0


class Query(Component):
    verb = "QUERY"
    help = "Gather the value of a variable from all targets into {{ query.KEY }} on each."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--timeout", type=float, default=DEFAULT_QUERY_TIMEOUT)
        parser.add_argument("key")

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        key = args["key"]
        try:
            gathered = ctx.exchange_query(key, ctx.variables.get(key), args["timeout"])
        except TimeoutError:
            return JobResult.failure(f"QUERY {key}: not every target answered within {args['timeout']} s")
        ctx.variables.setdefault("query", {})[key] = gathered
        return JobResult(
            state=JobState.SUCCESS, rc=0, changed=False, started=started, ended=time.time(),
            data={"query": {key: gathered}},
        )
