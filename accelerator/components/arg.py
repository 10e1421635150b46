"""ARG and ENV: set variables (for {{ templating }}) or environment (for RUN) on each agent.

Values persist in the agent for later jobs, as Directord's argument cache did.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from accelerator.components.base import Component, ExecContext
from accelerator.model import JobResult, JobState


class Arg(Component):
    verb = "ARG"
    help = "Set a variable on each target, usable as {{ KEY }} by later jobs."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("key")
        parser.add_argument("value", nargs="+")

    def store(self, ctx: ExecContext) -> dict[str, Any]:
        return ctx.variables

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        value = ctx.render(" ".join(args["value"]))
        store = self.store(ctx)
        changed = store.get(args["key"]) != value
        store[args["key"]] = value
        return JobResult(
            state=JobState.SUCCESS, rc=0, changed=changed, started=started, ended=time.time(),
            data={args["key"]: value},
        )


class Env(Arg):
    verb = "ENV"
    help = "Set an environment variable for later RUN jobs on each target."

    def store(self, ctx: ExecContext) -> dict[str, Any]:
        return ctx.environment
