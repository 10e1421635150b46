"""Read a role as Ansible would see it: tasks with their includes, handlers, variables, dependencies.

Includes whose file name is fixed (`import_tasks`, `include_tasks`, `import_role`,
`include_role`) are read here and become blocks around the included tasks, keeping the
include's own keywords, the way Ansible applies them.  The translator decides later whether
that is exactly what Ansible would have done (it is not, for instance, for a loop on an include).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.ansible_yaml import RoleFileError, find_yaml, load

INCLUDE_TASKS = {"include_tasks", "import_tasks", "ansible.builtin.include_tasks", "ansible.builtin.import_tasks"}
INCLUDE_ROLE = {"include_role", "import_role", "ansible.builtin.include_role", "ansible.builtin.import_role"}


@dataclass(slots=True)
class RawTask:
    """One task (or block) as written, and where: FILE:LINE relative to the roles directory."""

    data: dict[str, Any]
    where: str
    role: str
    # For expanded includes: the tasks read from the included file (the include becomes a block).
    included: list[RawTask] | None = None
    include_error: str = ""
    templated_include: str = ""  # include_tasks with a templated file name: chosen at run time
    block: list[RawTask] = field(default_factory=list)
    rescue: list[RawTask] = field(default_factory=list)
    always: list[RawTask] = field(default_factory=list)


@dataclass(slots=True)
class Role:
    name: str
    path: Path
    tasks: list[RawTask]
    handlers: list[RawTask]
    defaults: dict[str, Any]
    vars: dict[str, Any]
    dependencies: list[str]
    # Other roles whose files this one's include_role/import_role pulled in: name -> path.
    included_roles: dict[str, Path] = field(default_factory=dict)
    # Every task file of the role, by name, when a templated include may pick any of them.
    task_files: dict[str, list[RawTask]] = field(default_factory=dict)


class RoleReader:
    """Reads one role; `roles_dir` is where roles named by include_role / dependencies are found."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.roles_dir = path.parent
        self.included_roles: dict[str, Path] = {}
        self.task_files: dict[str, list[RawTask]] = {}

    def read(self) -> Role:
        if not self.path.is_dir():
            raise RoleFileError(f"{self.path}: not a role directory")
        tasks_dir = self.path / "tasks"
        main = find_yaml(tasks_dir, "main")
        tasks = self._task_file(self.path, main, [main] if main else []) if main else []
        handlers_file = find_yaml(self.path / "handlers", "main")
        handlers = self._task_file(self.path, handlers_file, [handlers_file]) if handlers_file else []
        return Role(
            name=self.path.name,
            path=self.path,
            tasks=tasks,
            handlers=handlers,
            defaults=self._variables(self.path / "defaults"),
            vars=self._variables(self.path / "vars"),
            dependencies=self._dependencies(),
            included_roles=self.included_roles,
            task_files=self.task_files,
        )

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.roles_dir))
        except ValueError:
            return str(path)

    def _variables(self, directory: Path) -> dict[str, Any]:
        found = find_yaml(directory, "main")
        if found is None:
            return {}
        data = load(found)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise RoleFileError(f"{found}:1: expected a map of variables")
        return data

    def _dependencies(self) -> list[str]:
        meta = find_yaml(self.path / "meta", "main")
        if meta is None:
            return []
        data = load(meta) or {}
        if not isinstance(data, dict):
            raise RoleFileError(f"{meta}:1: expected a map")
        names = []
        for entry in data.get("dependencies") or []:
            name = entry if isinstance(entry, str) else (entry or {}).get("role") or (entry or {}).get("name")
            if not isinstance(name, str):
                raise RoleFileError(f"{meta}:{getattr(entry, 'line', 1)}: a dependency needs a role name")
            names.append(name)
        return names

    def _task_file(self, role_path: Path, path: Path, stack: list[Path]) -> list[RawTask]:
        data = load(path)
        if data is None:
            return []
        if not isinstance(data, list):
            raise RoleFileError(f"{path}:1: a task file holds a list of tasks")
        return [self._task(role_path, path, item, stack) for item in data]

    def _task(self, role_path: Path, path: Path, data: Any, stack: list[Path]) -> RawTask:
        line = getattr(data, "line", 1)
        where = f"{self._relative(path)}:{line}"
        if not isinstance(data, dict):
            raise RoleFileError(f"{path}:{line}: a task must be a map")
        task = RawTask(data=data, where=where, role=role_path.name)
        for part in ("block", "rescue", "always"):
            items = data.get(part)
            if items is None:
                continue
            if not isinstance(items, list):
                raise RoleFileError(f"{path}:{line}: '{part}' must be a list of tasks")
            setattr(task, part, [self._task(role_path, path, item, stack) for item in items])
        action = next((key for key in data if key in INCLUDE_TASKS | INCLUDE_ROLE), None)
        if action is not None:
            self._expand(task, role_path, path, action, stack)
        return task

    def _read_task_files(self, role_path: Path, stack: list[Path]) -> None:
        """Read every task file a templated include_tasks could name (those of the role's tasks/)."""
        if self.task_files:
            return
        self.task_files["(reading)"] = []  # a file that includes templated names again must not recurse
        files = sorted(p for p in (role_path / "tasks").rglob("*")
                       if p.suffix in (".yml", ".yaml") and p not in stack and p.stem != "main")
        found = {str(p.relative_to(role_path / "tasks")): self._task_file(role_path, p, stack + [p]) for p in files}
        del self.task_files["(reading)"]
        self.task_files.update(found)

    def _expand(self, task: RawTask, role_path: Path, path: Path, action: str, stack: list[Path]) -> None:
        spec = task.data[action]
        if action in INCLUDE_TASKS:
            name = spec.get("file") if isinstance(spec, dict) else spec
            if isinstance(name, str) and ("{{" in name or "{%" in name) and "include" in action:
                task.templated_include = name
                self._read_task_files(role_path, stack)
                return
            if not isinstance(name, str) or "{{" in name or "{%" in name:
                task.include_error = f"the file name of {action} is templated ({name!r}); only fixed names are read"
                return
            target = role_path / "tasks" / name
            if not target.is_file():
                target = path.parent / name
            if not target.is_file():
                task.include_error = f"{action}: {name} not found in {self._relative(role_path / 'tasks')}"
                return
            if target in stack:
                task.include_error = f"{action}: {name} includes itself"
                return
            task.included = self._task_file(role_path, target, stack + [target])
            return
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or "{{" in name:
            task.include_error = f"{action} needs a fixed role name, got {name!r}"
            return
        other = self.roles_dir / name
        tasks_from = (spec.get("tasks_from") or "main") if isinstance(spec, dict) else "main"
        target = find_yaml(other / "tasks", str(tasks_from).removesuffix(".yml").removesuffix(".yaml"))
        if target is None:
            task.include_error = f"{action}: no tasks file {tasks_from!r} in role {name}"
            return
        if target in stack:
            task.include_error = f"{action}: {name} includes itself"
            return
        if other != self.path:
            self.included_roles[name] = other
        task.included = self._task_file(other, target, stack + [target])
