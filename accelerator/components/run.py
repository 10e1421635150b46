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
        parser.add_argument("--argv", action="store_true",
                            help="no shell: split the command into words and run it as Ansible's command module does")
        parser.add_argument("--creates", metavar="PATH", help="do not run when PATH exists (as Ansible's creates=)")
        parser.add_argument("--removes", metavar="PATH", help="do not run when PATH is missing (as Ansible's removes=)")
        parser.add_argument("--results-file", metavar="PATH",
                            help="also write the result as JSON to PATH (~ expanded; as Ansible's async jobs do)")
        parser.add_argument("--check", action="store_true",
                            help="check mode: apply --creates/--removes, then report what would run without running it")
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
        not_run = _guard(args.get("creates"), args.get("removes"), bool(args.get("check")))
        if not_run is not None:
            return not_run
        if args.get("check"):
            now = time.time()
            return JobResult(state=JobState.SUCCESS, rc=0, changed=True, started=now, ended=now,
                             data={"msg": "Command would have run if not in check mode"})
        try:
            argv = _command_argv(command) if args.get("argv") else ["/bin/sh", "-c", command]
        except ValueError as exc:
            return JobResult.failure(f"RUN: cannot split the command into words: {exc}")
        if args.get("become_user"):  # set by the agent for a job that must run as another user
            # sudo drops the caller's environment, so the job's own variables go on its command line
            extra = [f"{key}={value}" for key, value in args.get("env", {}).items()]
            argv = ["sudo", "-n", "-H", "-u", str(args["become_user"]), "--", *(["env", *extra] if extra else []), *argv]
        env = None
        if ctx.environment or args.get("env"):
            env = {**os.environ, **ctx.environment, **{k: ctx.render(v) for k, v in args["env"].items()}}
        started = time.time()
        try:
            process = subprocess.Popen(
                argv,
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
        if args.get("results_file"):
            _write_results_file(args["results_file"], command, rc, stdout, stderr, started)
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


def _guard(creates: str | None, removes: str | None, check: bool) -> JobResult | None:
    """The result Ansible's command module gives when creates=/removes= say not to run, else None."""
    import glob

    now = time.time()
    did = "Would" if check else "Did"
    if creates and glob.glob(os.path.expanduser(creates)):
        return JobResult(state=JobState.SUCCESS, rc=0, stdout=f"skipped, since {creates} exists", started=now,
                         ended=now, data={"msg": f"{did} not run command since '{creates}' exists"})
    if removes and not glob.glob(os.path.expanduser(removes)):
        return JobResult(state=JobState.SUCCESS, rc=0, stdout=f"skipped, since {removes} does not exist",
                         started=now, ended=now, data={"msg": f"{did} not run command since '{removes}' does not exist"})
    return None


def _write_results_file(path: str, command: str, rc: int, stdout: str, stderr: str, started: float) -> None:
    """The job's outcome where Ansible's async wrapper would leave it (best effort: a job never fails for it)."""
    import json

    target = Path(os.path.expanduser(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"cmd": command, "rc": rc, "stdout": stdout, "stderr": stderr,
                                      "start": started, "end": time.time(), "finished": 1}))
    except OSError:
        pass


def _command_argv(command: str) -> list[str]:
    """Words as the command module makes them: shlex-split, then ~ and $VARS expanded in each."""
    import shlex

    words = [os.path.expandvars(os.path.expanduser(word)) for word in shlex.split(command)]
    if not words:
        raise ValueError("no command")
    return words


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
