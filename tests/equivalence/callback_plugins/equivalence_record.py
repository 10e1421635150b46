"""Callback for the equivalence tests: how each role task ended on each host, as JSON.

Enabled only by tests/equivalence (ANSIBLE_CALLBACKS_ENABLED=equivalence_record); writes
$EQUIVALENCE_RECORD: one entry per task result (not per loop item), with the task's FILE:LINE.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: equivalence_record
type: aggregate
short_description: record each task's outcome and FILE:LINE for the convert-role equivalence tests
description: Writes every task result (task path, host, ok/changed/skipped/failed/ignored) to $EQUIVALENCE_RECORD.
requirements: [EQUIVALENCE_RECORD set in the environment]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "equivalence_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def _record(self, status: str, result: Any) -> None:
        task = result._task
        if status == "ok" and result._result.get("changed"):
            status = "changed"
        self.events.append({"path": task.get_path() or "", "name": task.get_name(), "host": result._host.get_name(),
                            "status": status})

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record("ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._record("skipped", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record("unreachable", result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        with open(os.environ["EQUIVALENCE_RECORD"], "w") as out:
            json.dump({"events": self.events, "recap": recap}, out, indent=1, sort_keys=True)
