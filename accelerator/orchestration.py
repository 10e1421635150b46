"""Orchestration files: a YAML list of {targets, async, jobs}, turned into JobSpecs.

    - targets: [web1, web2]      # optional: every active agent when absent
      async: false               # optional: true runs this entry beside the others
      jobs:
        - ARG: greeting hello
        - RUN: --timeout 10 echo {{ greeting }}
        - COPY: {src: files/motd, dest: /etc/motd, chmod: "0644"}

Ordinary entries of one file share a parent, so on each agent they run in file order and a
failure skips the rest of the file on that agent only.  Every error names the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerator import components, yamlfile
from accelerator.components.base import ComponentError
from accelerator.model import JobSpec, new_id

ENTRY_KEYS = {"targets", "async", "jobs"}


class OrchestrationError(ValueError):
    """A broken orchestration; the text starts with FILE:LINE."""


@dataclass(slots=True)
class Plan:
    """Everything needed to run a file: the jobs in order and the files to upload first."""

    jobs: list[JobSpec] = field(default_factory=list)
    uploads: dict[str, Path] = field(default_factory=dict)


def is_service_file(path: Path) -> bool:
    """True for a service file (a map with `service:`), which the graph runner runs instead."""
    try:
        document = yamlfile.load(path)
    except yamlfile.YamlFileError:
        return False
    return isinstance(document, dict) and "service" in document


def load(path: Path, *, targets_override: list[str] | None = None) -> Plan:
    try:
        document = yamlfile.load(path)
    except yamlfile.YamlFileError as exc:
        raise OrchestrationError(str(exc)) from None
    if not isinstance(document, list):
        raise OrchestrationError(f"{path}:1: expected a list of orchestrations")
    plan = Plan()
    serial_parent = new_id()
    for index, entry in enumerate(document, 1):
        _add_entry(plan, path, index, entry, serial_parent, targets_override)
    return plan


def _add_entry(plan: Plan, path: Path, index: int, entry: Any, serial_parent: str,
               targets_override: list[str] | None) -> None:
    line = getattr(entry, "line", 0)
    where = f"{path}:{line}"
    if not isinstance(entry, dict):
        raise OrchestrationError(f"{path}: orchestration {index} must be a map with 'jobs'")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise OrchestrationError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                 f"expected {', '.join(sorted(ENTRY_KEYS))}")
    targets = entry.get("targets", [])
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise OrchestrationError(f"{where}: 'targets' must be a list of agent names")
    jobs = entry.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise OrchestrationError(f"{where}: 'jobs' must be a non-empty list")
    is_async = bool(entry.get("async", False))
    parent = new_id() if is_async else serial_parent
    for job in jobs:
        plan.jobs.append(_job(plan, path, job, line, targets_override or targets, parent, is_async))


def _job(plan: Plan, path: Path, job: Any, entry_line: int, targets: list[str],
         parent: str, is_async: bool) -> JobSpec:
    line = getattr(job, "line", entry_line)
    if not isinstance(job, dict) or len(job) != 1:
        raise OrchestrationError(f"{path}:{line}: a job is a map of one verb to its arguments, e.g. '- RUN: echo hi'")
    verb, spec = next(iter(job.items()))
    try:
        component = components.get(str(verb))
        parsed = component.parse(spec if spec is not None else "", base_dir=path.parent)
    except ComponentError as exc:
        raise OrchestrationError(f"{path}:{line}: {exc}") from None
    plan.uploads.update(parsed.uploads)
    label = f"{verb} {spec}" if isinstance(spec, str) else str(verb)
    return JobSpec(
        verb=component.verb,
        args=parsed.args,
        targets=list(targets),
        parent=parent,
        timeout=parsed.timeout,
        blobs=sorted(parsed.uploads),
        label=f"{path.name}:{line} {label}"[:200],
        async_parent=is_async,
    )
