"""RUN: a shell command on the agent, with env, cwd and a timeout that kills the whole group."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from accelerator.components.base import (
    Component,
    ComponentError,
    ExecContext,
    Parsed,
    key_value_pairs,
    split_leading_options,
)
from accelerator.model import JobResult, JobState

# Output beyond this is cut (with a marker) so one chatty command cannot flood the store.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024


def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    if len(raw) > MAX_OUTPUT_BYTES:
        return text[:MAX_OUTPUT_BYTES] + f"\n[output truncated: {len(raw)} bytes]"
    return text


class Run(Component):
    verb = "RUN"
    help = "Run a command with /bin/sh on each target."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra environment")
        parser.add_argument("--cwd", help="working directory")
        parser.add_argument("--timeout", type=float, help="seconds before the process group is killed")
        parser.add_argument("--stdout-arg", help="store stripped stdout as this variable")
        parser.add_argument("--no-template", action="store_true", help="do not expand {{ variables }}")
        parser.add_argument("command", nargs=argparse.REMAINDER)

    def parse(self, spec: str | list[str] | dict[str, Any], base_dir: Path = Path(".")) -> Parsed:
        """The command is kept as written (pipes, quotes, $VARS): only leading --options are split off."""
        if isinstance(spec, str):
            argv, command = split_leading_options(spec, self.parser())
            spec = argv + ["--", command] if command else argv
        return super().parse(spec, base_dir)

    def finish(self, args: dict[str, Any], base_dir: Path) -> Parsed:
        words = list(args.pop("command") or [])
        if words and words[0] == "--":
            words = words[1:]
        if not words or not "".join(words).strip():
            raise ComponentError("RUN: a command is required")
        args["command"] = words[0] if len(words) == 1 else " ".join(words)
        args["env"] = key_value_pairs(args.get("env"), self.verb, "--env")
        if args["timeout"] is not None and args["timeout"] <= 0:
            raise ComponentError("RUN: --timeout must be positive")
        return Parsed(args=args, timeout=args["timeout"])

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        command = args["command"] if args.get("no_template") else ctx.render(args["command"])
        env = None
        if ctx.environment or args.get("env"):
            env = {**os.environ, **ctx.environment, **{k: ctx.render(v) for k, v in args["env"].items()}}
        started = time.time()
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=args.get("cwd") or None,
                env=env,
                start_new_session=True,  # own process group, so a timeout can kill all of it
            )
        except OSError as exc:
            return JobResult.failure(f"RUN: cannot start command: {exc}")
        timed_out = False
        try:
            out, err = process.communicate(timeout=args.get("timeout"))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process.pid)
            out, err = process.communicate()
        stdout, stderr = _decode(out), _decode(err)
        if timed_out:
            stderr += f"\nRUN: timed out after {args['timeout']} s; process group killed"
        rc = process.returncode
        ok = rc == 0 and not timed_out
        if ok and args.get("stdout_arg"):
            ctx.variables[args["stdout_arg"]] = stdout.strip()
        return JobResult(
            state=JobState.SUCCESS if ok else JobState.FAILED,
            rc=rc,
            stdout=stdout,
            stderr=stderr,
            changed=ok,
            started=started,
            ended=time.time(),
            error="timeout" if timed_out else "",
        )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
