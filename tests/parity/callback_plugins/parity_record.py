"""Callback for the parity tests: every task result and the recap, written as JSON.

Enabled only by the parity tests (ANSIBLE_CALLBACKS_ENABLED=parity_record); the file named by
PARITY_RECORD receives one document per run, compared between stock Ansible and ours.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: parity_record
type: aggregate
short_description: record task results and the recap as JSON for the parity tests
description: Writes every runner result (with its task, host and status) and the final stats to $PARITY_RECORD.
requirements: [PARITY_RECORD set in the environment]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "parity_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def _record(self, status: str, result: Any, item: bool = False) -> None:
        task = result._task
        self.events.append({
            "task": f"{task.get_name()} [{task.action}]",
            "host": result._host.get_name(),
            "status": status,
            "item": item,
            "handler": bool(getattr(task, "implicit", False)) or type(task).__name__ == "Handler",
            "result": json.loads(json.dumps(result._result, default=repr)),
        })

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record("ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._record("skipped", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record("unreachable", result)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._record("ok", result, item=True)

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self._record("failed", result, item=True)

    def v2_runner_item_on_skipped(self, result: Any) -> None:
        self._record("skipped", result, item=True)

    def v2_runner_retry(self, result: Any) -> None:
        self._record("retry", result)

    def v2_runner_on_async_ok(self, result: Any) -> None:
        self._record("async_ok", result)

    def v2_runner_on_async_failed(self, result: Any) -> None:
        self._record("async_failed", result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        with open(os.environ["PARITY_RECORD"], "w") as out:
            json.dump({"events": self.events, "recap": recap}, out, indent=1, sort_keys=True)
