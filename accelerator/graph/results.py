"""What a task registers: the dict an Ansible module would have returned, built from a JobResult.

Later tasks read registered values (`out.stdout_lines`, `out is changed`, `st.stat.exists`), so
a native job must register the same shape as the module it replaces.
"""

from __future__ import annotations

import datetime
from typing import Any

from accelerator.model import JobResult


def _stamp(seconds: float | None) -> str:
    return datetime.datetime.fromtimestamp(seconds or 0).strftime("%Y-%m-%d %H:%M:%S.%f")


def command_result(result: JobResult, cmd: Any) -> dict[str, Any]:
    """As ansible.builtin.command/shell report: always changed when run, failed on a non-zero rc."""
    stdout = result.stdout.rstrip("\r\n")
    stderr = result.stderr.rstrip("\r\n")
    message = str(result.data.get("msg", ""))
    not_run = result.rc == 0 and message.startswith(("Did not run", "Would not run"))
    delta = (result.ended or 0) - (result.started or 0)
    out: dict[str, Any] = {
        "changed": not not_run,
        "cmd": cmd,
        "rc": result.rc,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_lines": stdout.splitlines(),
        "stderr_lines": stderr.splitlines(),
        "msg": result.data.get("msg", ""),
    }
    if not not_run:
        out.update(start=_stamp(result.started), end=_stamp(result.ended), delta=str(datetime.timedelta(seconds=delta)))
    if result.rc is None:
        out.update(failed=True, msg=result.error or "command did not run", rc=2)
    elif result.rc != 0:
        out.update(failed=True, msg="non-zero return code")
    return out


def module_result(result: JobResult) -> dict[str, Any]:
    """An ANSIBLE, FILE or WRITE job: the module-shaped data it returned, with changed/failed set."""
    out = dict(result.data)
    out["changed"] = bool(result.changed)
    if not result.ok:
        out["failed"] = True
        out.setdefault("msg", result.error or result.stderr or "failed")
    return out
