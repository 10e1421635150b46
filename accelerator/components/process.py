"""Running a helper command (systemctl, service, apt-get, a WAIT probe) and keeping its output.

Shared by the verbs that drive host tools.  RUN has its own loop because it needs process-group
timeouts and streams; these verbs need only "run it, tell me rc/stdout/stderr".
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from accelerator.components.run import MAX_OUTPUT_BYTES


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def describe(self) -> str:
        """One line for an error message: the command, its exit code and what it said."""
        said = (self.stderr.strip() or self.stdout.strip()).splitlines()
        tail = f": {said[-1]}" if said else ""
        return f"`{' '.join(self.argv)}` exited {self.rc}{tail}"


def run_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> CommandOutcome:
    """Run argv (no shell) and return its outcome; a missing program is rc 127, not an exception.

    Output goes to temporary files rather than pipes: an init script's `start` leaves a daemon
    behind that may inherit stdout, and a pipe would then stay open until the daemon exits.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            completed = subprocess.run(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=dict(env) if env is not None else None, check=False,
            )
        except OSError as exc:
            return CommandOutcome(tuple(argv), 127, "", f"cannot run {argv[0]}: {exc}")
        return CommandOutcome(tuple(argv), completed.returncode, _read_capped(out), _read_capped(err))


def _read_capped(handle: IO[bytes]) -> str:
    """Decode at most MAX_OUTPUT_BYTES, so one chatty tool cannot flood the result store."""
    handle.seek(0)
    raw = handle.read(MAX_OUTPUT_BYTES + 1)
    text = raw[:MAX_OUTPUT_BYTES].decode("utf-8", errors="replace")
    if len(raw) > MAX_OUTPUT_BYTES:
        text += f"\n[output truncated at {MAX_OUTPUT_BYTES} bytes]"
    return text
