"""One role to one service: read it, translate every task, order them by data flow, write it out."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from converters import dataflow
from converters.ansible_yaml import RoleFileError
from converters.role import Role, RoleReader
from converters.translate import Row, TaskError, Translator

ASSET_DIRS = ("templates", "files", "vars")
_MAGIC = {"ansible_check_mode", "ansible_loop", "ansible_loop_var", "ansible_index_var", "ansible_play_hosts",
          "ansible_play_hosts_all", "ansible_play_batch", "ansible_failed_task", "ansible_failed_result",
          "ansible_managed", "ansible_search_path", "ansible_parent_role_names", "ansible_role_names"}


class ConversionError(ValueError):
    """A role that cannot be converted at all; the text names the file and line."""


@dataclass(slots=True)
class Conversion:
    role: str
    path: Path
    document: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    error: str = ""
    assets: list[Path] = field(default_factory=list)  # role directories whose templates/files/vars are copied

    def totals(self) -> dict[str, int]:
        counts = {"native": 0, "fallback": 0, "unsupported": 0}
        for row in self.rows:
            counts[row.status] += 1
        counts["tasks"] = len(self.rows)
        return counts


def convert(role_path: Path) -> Conversion:
    """Translate the role at `role_path`; a role that cannot be read gives a Conversion with `error`."""
    conversion = Conversion(role=role_path.name, path=role_path)
    try:
        role = RoleReader(role_path).read()
        conversion.document, conversion.rows = _translate(role)
    except (RoleFileError, TaskError, ValueError) as exc:
        conversion.error = str(exc)
        return conversion
    except Exception as exc:  # noqa: BLE001 - one role's surprise must not stop a whole tree
        conversion.error = f"{role_path}: convert-role could not convert this role ({type(exc).__name__}: {exc})"
        return conversion
    conversion.assets = [role_path, *role.included_roles.values()]
    seen: set[str] = set()
    conversion.rows = [row for row in conversion.rows if not (row.source in seen or seen.add(row.source))]  # type: ignore[func-returns-value]
    return conversion


def _translate(role: Role) -> tuple[dict[str, Any], list[Row]]:
    translator = Translator(roles_dir=role.path.parent)
    tasks = translator.tasks(role.tasks)
    handlers = translator.tasks(role.handlers)
    task_files = {name: translator.tasks(raw) for name, raw in role.task_files.items()}
    defaults, variables = dict(role.defaults), dict(role.vars)
    for other in role.included_roles.values():
        included = RoleReader(other).read()
        defaults = {**included.defaults, **defaults}
        variables = {**included.vars, **variables}
        handlers += translator.tasks(included.handlers)
    requires = dataflow.requirements(tasks)
    ordered = [_ordered(task, requires[task["id"]]) for task in tasks]
    document: dict[str, Any] = {"format": 1, "service": role.name, "source": f"../{role.name}"}
    if _uses_facts(tasks + handlers) or _templates_use_facts([role.path, *role.included_roles.values()]):
        document["gather_facts"] = True
    elif translator.facts_needed:
        document["gather_facts"] = "min"
    if role.dependencies:
        document["requires"] = role.dependencies
    if defaults:
        document["defaults"] = defaults
    if variables:
        document["vars"] = variables
    document["tasks"] = ordered
    if task_files:
        document["task_files"] = task_files
    if handlers:
        document["handlers"] = handlers
    return _plain(document), translator.rows


def _ordered(task: dict[str, Any], requires: list[str]) -> dict[str, Any]:
    """Keys in reading order: who, what it needs, how, then the jobs (or block)."""
    head = {k: task[k] for k in ("id", "name", "source") if k in task}
    if requires:
        head["requires"] = requires
    tail = {k: task[k] for k in ("jobs", "block", "rescue", "always") if k in task}
    middle = {k: v for k, v in task.items() if k not in head and k not in tail}
    return {**head, **middle, **tail}


def _uses_facts(tasks: list[dict[str, Any]]) -> bool:
    if "ansible_facts" in json.dumps(tasks, default=str):  # also as a subscript: hostvars[h]['ansible_facts']
        return True
    for task in tasks:
        names = dataflow.effects(task).reads
        if "ansible_facts" in names or any(n.startswith("ansible_") and n not in _MAGIC for n in names):
            return True
    return False


def _templates_use_facts(role_paths: list[Path]) -> bool:
    for role_path in role_paths:
        for template in sorted((role_path / "templates").rglob("*")) if (role_path / "templates").is_dir() else []:
            if template.is_file():
                try:
                    names = dataflow.template_names(template.read_text(encoding="utf-8"))
                except UnicodeDecodeError:
                    continue
                if "ansible_facts" in names or any(n.startswith("ansible_") and n not in _MAGIC for n in names):
                    return True
    return False


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    return value


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks, no aliases: easy to read and to diff."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(document: dict[str, Any], header: str = "") -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120,
                     allow_unicode=True)
    return header + body


def write(conversion: Conversion, out_dir: Path) -> Path:
    """The service file and copies of the templates/files/vars it refers to, under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in conversion.assets:
        for name in ASSET_DIRS:
            if (source / name).is_dir():
                shutil.copytree(source / name, out_dir / name, dirs_exist_ok=True)
    document = dict(conversion.document)
    document["source"] = _relative_source(conversion.path, out_dir)
    header = (f"# Converted from the Ansible role {conversion.role} by convert-role.\n"
              "# Tasks carry their original FILE:LINE in 'source'; see the coverage report for what is native.\n")
    target = out_dir / "service.yaml"
    target.write_text(dump(document, header))
    return target


def _relative_source(role_path: Path, out_dir: Path) -> str:
    try:
        return str(Path(shutil.os.path.relpath(role_path.resolve(), out_dir.resolve())))  # type: ignore[attr-defined]
    except ValueError:
        return str(role_path)
