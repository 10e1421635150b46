"""Service files: load, check against the schema, and turn into Task objects the graph is built from.

A service is what convert-role writes for one role (and what people write by hand): variables,
tasks that each hold DSL jobs, handlers, and the ordering facts (`requires`, `provides`,
`needed-by`).  Loading checks everything that can be checked before a job runs: the schema,
unique ids, known verbs, and names in `requires` that resolve; each error names FILE:LINE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerator import components, yamlfile
from accelerator.graph import schema

# Verbs the graph runner carries out itself, on the controller: they only read and set variables
# or decide about the run, so sending them to an agent would only add a round trip.
CONTROLLER_VERBS = frozenset({"ARG", "VARS", "DEBUG", "FAIL", "ASSERT", "TEMPLATE", "META", "PLAYBOOK",
                              "ASYNC_STATUS"})

# Keywords a task carries over from Ansible, interpreted by the runner (accelerator.graph.unit).
TASK_KEYWORDS = (
    "when", "loop", "loop_with", "loop_control", "register", "changed_when", "failed_when", "ignore_errors",
    "until", "retries", "delay", "become", "become_user", "environment", "vars", "tags",
    "run_once", "delegate_to", "check_mode", "no_log", "async", "poll",
)


class ServiceError(ValueError):
    """A service file that cannot run; the text starts with FILE:LINE."""


@dataclass(slots=True)
class Task:
    """One task of a service: jobs (or a block of tasks) plus the Ansible keywords around them."""

    service: str
    local_id: str
    where: str  # FILE:LINE of the task in the service file
    name: str = ""
    source: str = ""  # FILE:LINE of the original Ansible task, when converted
    jobs: list[dict[str, Any]] = field(default_factory=list)
    block: list[Task] = field(default_factory=list)
    rescue: list[Task] = field(default_factory=list)
    always: list[Task] = field(default_factory=list)
    keywords: dict[str, Any] = field(default_factory=dict)
    requires: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    needed_by: list[str] = field(default_factory=list)
    notify: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=list)
    rollback: list[dict[str, Any]] = field(default_factory=list)
    on_change: bool = False
    dynamic: bool = False  # an include: when/loop evaluated once, here, and the include is reported
    include: str = ""  # a templated include: the task_files entry it names
    apply: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The node's name in the graph: service.task."""
        return f"{self.service}.{self.local_id}"

    @property
    def title(self) -> str:
        return self.name or self.local_id


@dataclass(slots=True)
class Service:
    name: str
    path: Path
    tasks: list[Task]
    handlers: list[Task]
    defaults: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    requires: list[str] = field(default_factory=list)
    gather_facts: bool | str = False
    files_dir: Path = Path("files")
    templates_dir: Path = Path("templates")
    vars_dir: Path = Path("vars")
    source: str = ""
    task_files: dict[str, list[Task]] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load(path: Path) -> Service:
    """Read, validate and check one service file."""
    try:
        document = schema.load_valid(path, "service")
    except schema.SchemaError as exc:
        raise ServiceError(str(exc)) from None
    name = str(document["service"])
    base = path.parent
    service = Service(
        name=name,
        path=path,
        tasks=[_task(name, path, raw) for raw in document["tasks"]],
        handlers=[_task(name, path, raw) for raw in document.get("handlers") or []],
        defaults=yamlfile.plain(document.get("defaults") or {}),
        vars=yamlfile.plain(document.get("vars") or {}),
        requires=list(document.get("requires") or []),
        gather_facts=document.get("gather_facts", False),
        files_dir=base / document.get("files_dir", "files"),
        templates_dir=base / document.get("templates_dir", "templates"),
        vars_dir=base / document.get("vars_dir", "vars"),
        source=str(document.get("source", "")),
        task_files={str(file): [_task(name, path, raw) for raw in tasks]
                    for file, tasks in (document.get("task_files") or {}).items()},
    )
    _check_ids(service)
    return service


def _task(service: str, path: Path, raw: dict[str, Any]) -> Task:
    where = f"{path}:{yamlfile.line_of(raw, 1)}"
    task = Task(
        service=service,
        local_id=str(raw["id"]),
        where=where,
        name=str(raw.get("name", "")),
        source=str(raw.get("source", "")),
        jobs=[_job(where, job) for job in raw.get("jobs") or []],
        block=[_task(service, path, t) for t in raw.get("block") or []],
        rescue=[_task(service, path, t) for t in raw.get("rescue") or []],
        always=[_task(service, path, t) for t in raw.get("always") or []],
        keywords={k: yamlfile.plain(raw[k]) for k in TASK_KEYWORDS if k in raw},
        requires=list(raw.get("requires") or []),
        provides=list(raw.get("provides") or []),
        needed_by=list(raw.get("needed-by") or []),
        notify=list(raw.get("notify") or []),
        listen=list(raw.get("listen") or []),
        rollback=[_job(where, job) for job in raw.get("rollback") or []],
        on_change=bool(raw.get("on_change", False)),
        dynamic=bool(raw.get("dynamic", False)) or "include" in raw,
        include=str(raw.get("include", "")),
        apply=yamlfile.plain(raw.get("apply") or {}),
    )
    return task


def _job(where: str, raw: dict[str, Any]) -> dict[str, Any]:
    verb = next(iter(raw))
    line = yamlfile.line_of(raw, 0)
    here = f"{where.rsplit(':', 1)[0]}:{line}" if line else where
    if verb not in CONTROLLER_VERBS and verb not in components.REGISTRY:
        known = ", ".join(sorted(CONTROLLER_VERBS | set(components.REGISTRY)))
        raise ServiceError(f"{here}: unknown verb {verb!r}; known verbs: {known}")
    return {verb: yamlfile.plain(raw[verb])}


def _check_ids(service: Service) -> None:
    seen: dict[str, str] = {}
    included = [task for tasks in service.task_files.values() for task in tasks]
    for task in walk(service.tasks + service.handlers + included):
        if task.local_id in seen:
            raise ServiceError(f"{task.where}: task id {task.local_id!r} is already used at {seen[task.local_id]}")
        seen[task.local_id] = task.where


def walk(tasks: list[Task]) -> list[Task]:
    """Every task, including those inside blocks, in file order."""
    found: list[Task] = []
    for task in tasks:
        found.append(task)
        found.extend(walk(task.block + task.rescue + task.always))
    return found
