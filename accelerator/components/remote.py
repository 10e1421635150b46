"""EXEC, PUT, FETCH: the three primitives of an Ansible connection, run by the agent.

The `directord.accelerator.agent` connection plugin maps `exec_command`, `put_file` and
`fetch_file` onto these verbs, so that everything an action plugin does over SSH (make a temp
dir, upload a file, run a command with data on stdin, read a file back) travels as jobs instead.
They carry bytes, not text: stdout of a command, a file's content.  Unlike RUN they never
template and never interpret exit codes: the plugin hands rc, stdout and stderr to Ansible as
they are, and Ansible decides what failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from accelerator.components.base import Component, ComponentError, ExecContext, Parsed
from accelerator.model import JobResult, JobState

# Above this a file travels as a blob (chunked through the server) instead of inside the job.
INLINE_BYTES = 2 * 1024 * 1024
# A FETCH answers at most this much per job; the plugin asks again from the next offset.
FETCH_CHUNK = 4 * 1024 * 1024
# Output of a command beyond this is cut with a marker, as stock connections never do, but a
# result frame must stay below the protocol's limit.
MAX_OUTPUT_BYTES = 6 * 1024 * 1024


class _MapOnly(Component):
    """These verbs are built by the connection plugin, never typed: they take a map of fields."""

    fields: frozenset[str] = frozenset()

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        """No command-line form."""

    def parse(self, spec: str | list[str] | dict[str, Any], base_dir: Path = Path(".")) -> Parsed:
        if not isinstance(spec, dict):
            raise ComponentError(f"{self.verb}: takes a map of fields ({', '.join(sorted(self.fields))})")
        unknown = set(spec) - self.fields
        if unknown:
            raise ComponentError(f"{self.verb}: unknown field(s) {', '.join(sorted(unknown))}")
        return Parsed(args=dict(spec))


class Exec(_MapOnly):
    verb = "EXEC"
    help = "Run a command line with /bin/sh, feeding stdin bytes; report rc and raw output."
    fields = frozenset({"command", "stdin", "cwd"})

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        command = args.get("command")
        if not isinstance(command, str) or not command:
            return JobResult.failure("EXEC: a command is required")
        stdin = args.get("stdin")
        started = time.time()
        # Output goes to files, not pipes: a daemon the command starts (async_wrapper does) may
        # keep inherited pipes open long after the command itself returned.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                process = subprocess.Popen(
                    ["/bin/sh", "-c", command],
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=args.get("cwd") or None,
                )
            except OSError as exc:
                return JobResult.failure(f"EXEC: cannot start /bin/sh: {exc}")
            if stdin:
                assert process.stdin is not None
                try:
                    process.stdin.write(stdin)
                except BrokenPipeError:
                    pass  # the command did not read it all; its rc tells what happened
                process.stdin.close()
            rc = process.wait()
            return JobResult(
                state=JobState.SUCCESS, rc=rc, started=started, ended=time.time(),
                data={"stdout": _read_capped(out), "stderr": _read_capped(err)},
            )


class Put(_MapOnly):
    verb = "PUT"
    help = "Write bytes (inline or a blob) to a path, as a connection's put_file does."
    fields = frozenset({"path", "data", "blob"})

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        path = args.get("path")
        if not isinstance(path, str) or not path:
            return JobResult.failure("PUT: a destination path is required")
        try:
            if args.get("blob"):
                source = ctx.fetch_blob(str(args["blob"]))
                with source.open("rb") as reader, open(path, "wb") as writer:
                    while chunk := reader.read(1 << 20):
                        writer.write(chunk)
            else:
                data = args.get("data") or b""
                with open(path, "wb") as writer:
                    writer.write(data if isinstance(data, bytes) else str(data).encode())
        except (OSError, ValueError) as exc:
            return JobResult.failure(f"PUT {path}: {exc}")
        return JobResult(state=JobState.SUCCESS, rc=0, started=started, ended=time.time())


class Fetch(_MapOnly):
    verb = "FETCH"
    help = "Read up to 4 MiB of a file from an offset, as a connection's fetch_file does."
    fields = frozenset({"path", "offset"})

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        path = args.get("path")
        offset = args.get("offset") or 0
        if not isinstance(path, str) or not path or not isinstance(offset, int) or offset < 0:
            return JobResult.failure("FETCH: needs a path and a non-negative offset")
        try:
            with open(path, "rb") as reader:
                info = os.fstat(reader.fileno())
                size, mode = info.st_size, info.st_mode & 0o7777
                reader.seek(offset)
                data = reader.read(FETCH_CHUNK)
        except OSError as exc:
            return JobResult.failure(f"FETCH {path}: {exc}")
        return JobResult(
            state=JobState.SUCCESS, rc=0, started=started, ended=time.time(),
            data={"data": data, "size": size, "eof": offset + len(data) >= size, "mode": mode},
        )


def _read_capped(handle: Any) -> bytes:
    handle.seek(0)
    data: bytes = handle.read(MAX_OUTPUT_BYTES + 1)
    if len(data) > MAX_OUTPUT_BYTES:
        return data[:MAX_OUTPUT_BYTES] + b"\n[output truncated by the directord agent]"
    return data
