"""Task-level translation: split a task into its module and keywords, carry the keywords over,
and turn includes and blocks into service blocks.  Every task gets a report row."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters import modules
from converters.ansible_yaml import tagged_values
from converters.role import INCLUDE_ROLE, INCLUDE_TASKS, RawTask

# Ansible's task keywords (ansible.playbook.task.Task attributes) plus block and handler ones.
ANSIBLE_KEYWORDS = {
    "action", "any_errors_fatal", "args", "async", "become", "become_exe", "become_flags", "become_method",
    "become_user", "changed_when", "check_mode", "collections", "connection", "debugger", "delay",
    "delegate_facts", "delegate_to", "diff", "environment", "failed_when", "ignore_errors", "ignore_unreachable",
    "local_action", "loop", "loop_control", "module_defaults", "name", "no_log", "notify", "poll", "port",
    "register", "remote_user", "retries", "run_once", "tags", "throttle", "timeout", "until", "vars", "when",
    "block", "rescue", "always", "listen",
}
# Keywords the service format carries with the same meaning.
CARRIED = ("when", "loop_control", "register", "changed_when", "failed_when", "ignore_errors", "until", "retries",
           "delay", "become", "become_user", "environment", "vars", "tags", "run_once", "delegate_to",
           "check_mode", "no_log", "listen", "async", "poll")
# Keywords with no effect on what a task does to its host.
HARMLESS = {"name", "debugger", "diff", "throttle"}
UNSUPPORTED_KEYWORDS = {
    "delegate_facts": "delegate_facts",
    "any_errors_fatal": "any_errors_fatal stops every host",
    "ignore_unreachable": "ignore_unreachable",
    "module_defaults": "module_defaults",
    "connection": "a per-task connection",
    "remote_user": "a per-task remote_user",
    "become_exe": "become_exe", "become_flags": "become_flags", "port": "a per-task port",
    "collections": "the collections search list", "timeout": "a task timeout",
}
_SLUG = re.compile(r"[^a-z0-9]+")


class TaskError(ValueError):
    """A task Ansible itself would reject (no module, two modules); names FILE:LINE."""


@dataclass(slots=True)
class Row:
    """One line of the coverage report."""

    id: str
    name: str
    source: str
    module: str
    status: str  # native | fallback | unsupported
    reason: str = ""

    def to_wire(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "source": self.source, "module": self.module,
                "status": self.status, "reason": self.reason}


@dataclass(slots=True)
class Translator:
    roles_dir: Path
    rows: list[Row] = field(default_factory=list)
    facts_needed: set[str] = field(default_factory=set)
    _ids: set[str] = field(default_factory=set)

    def tasks(self, raw_tasks: list[RawTask]) -> list[dict[str, Any]]:
        return [self.task(raw) for raw in raw_tasks]

    def new_id(self, text: str) -> str:
        base = _SLUG.sub("-", text.lower()).strip("-")[:48].strip("-") or "task"
        candidate, number = base, 2
        while candidate in self._ids:
            candidate, number = f"{base}-{number}", number + 1
        self._ids.add(candidate)
        return candidate

    def task(self, raw: RawTask) -> dict[str, Any]:
        data = raw.data
        if raw.block or "block" in data:
            return self._block(raw)
        if raw.included is not None or raw.include_error or raw.templated_include:
            return self._include(raw)
        module, args = split_action(data, raw.where)
        short = modules.short_name(module)
        name = str(data.get("name") or short)
        out: dict[str, Any] = {"id": self.new_id(name), "name": name, "source": raw.where}
        row = Row(out["id"], name, raw.where, short, "native")
        problems = self._keyword_problems(data) + [f"!{t.tag.strip('!')} value" for t in tagged_values(data)]
        ctx = modules.Context(role_path=self.roles_dir / raw.role, loop_with=_loop_with(data),
                              loop_terms=_loop_terms(data), facts_needed=self.facts_needed)
        jobs: list[dict[str, Any]] = []
        if "async" in data and short not in ("command", "shell"):
            problems.append(f"async {short}: only commands run asynchronously natively")
        try:
            if problems:
                raise modules.Unsupported(problems[0])
            jobs = self._jobs(short, module, args, ctx)
        except modules.Fallback as fallback:
            jobs = modules.fallback_jobs(fallback, module, args)
            row.status, row.reason = "fallback", str(fallback)
        except modules.Unsupported as unsupported:
            row.status, row.reason = "unsupported", str(unsupported)
            jobs = [{"FAIL": {"msg": f"convert-role: {raw.where} ({name}) was not converted: {unsupported}"}}]
        self._keywords(data, out, ctx)
        out["jobs"] = jobs
        self.rows.append(row)
        return out

    def _jobs(self, short: str, module: str, args: dict[str, Any], ctx: modules.Context) -> list[dict[str, Any]]:
        if short in modules.TRANSLATORS and (module == short or module.startswith(modules.BUILTIN_PREFIXES)):
            return modules.TRANSLATORS[short](args, ctx)
        if short in modules.CONTROLLER_ACTIONS and (module == short or module.startswith(modules.BUILTIN_PREFIXES)):
            raise modules.Unsupported(f"{short}: its action plugin does work on the controller")
        if short in ("uri",) and "src" in args:
            raise modules.Unsupported("uri with src: its action plugin uploads the file")
        if short == "unarchive" and args.get("remote_src") not in (True, "yes", "true"):
            raise modules.Unsupported("unarchive of a controller file: its action plugin uploads it")
        if (ctx.role_path / "library" / f"{short}.py").is_file():
            raise modules.Unsupported(f"{module} is a module from the role's own library/")
        raise modules.Fallback(f"no native verb for {short}")

    def _keyword_problems(self, data: dict[str, Any]) -> list[str]:
        problems = [reason for key, reason in UNSUPPORTED_KEYWORDS.items() if key in data]
        method = data.get("become_method")
        if method not in (None, "sudo"):
            problems.append(f"become_method {method}")
        control = data.get("loop_control") or {}
        unknown = set(control) - {"loop_var", "index_var", "label", "pause", "extended"} if isinstance(control, dict) else set()
        if unknown:
            problems.append(f"loop_control {', '.join(sorted(unknown))}")
        return problems

    def _keywords(self, data: dict[str, Any], out: dict[str, Any], ctx: modules.Context) -> None:
        for key in CARRIED:
            if key in data:
                value = data[key]
                if key in ("when", "changed_when", "failed_when", "until") and isinstance(value, str):
                    value = [value] if key == "when" else value
                if key == "vars" and isinstance(value, list):  # the old list-of-maps form, merged as Ansible does
                    value = {k: v for item in value if isinstance(item, dict) for k, v in item.items()}
                if key in ("tags", "listen") and isinstance(value, str):
                    value = [part.strip() for part in value.split(",")]
                out[key] = value
        if "notify" in data:
            notify = data["notify"]
            out["notify"] = [notify] if isinstance(notify, str) else list(notify)
        if ctx.loop_consumed:
            return
        if "loop" in data:
            out["loop"] = data["loop"]
        elif ctx.loop_with:
            out["loop"] = ctx.loop_terms
            out["loop_with"] = ctx.loop_with

    def _block(self, raw: RawTask) -> dict[str, Any]:
        data = raw.data
        name = str(data.get("name") or "block")
        out: dict[str, Any] = {"id": self.new_id(name), "name": name, "source": raw.where}
        problems = self._keyword_problems(data)
        ctx = modules.Context(role_path=self.roles_dir / raw.role)
        self._keywords(data, out, ctx)
        out["block"] = self.tasks(raw.block)
        if raw.rescue:
            out["rescue"] = self.tasks(raw.rescue)
        if raw.always:
            out["always"] = self.tasks(raw.always)
        if problems:
            self.rows.append(Row(out["id"], name, raw.where, "block", "unsupported", problems[0]))
        return out

    def _include(self, raw: RawTask) -> dict[str, Any]:
        """import_* becomes a block (keywords inherited); include_* a dynamic include (reported itself)."""
        data = raw.data
        action = next(key for key in data if key in INCLUDE_TASKS | INCLUDE_ROLE)
        short = modules.short_name(action)
        dynamic = short.startswith("include_")
        name = str(data.get("name") or short)
        out: dict[str, Any] = {"id": self.new_id(name), "name": name, "source": raw.where}
        ctx = modules.Context(role_path=self.roles_dir / raw.role, loop_with=_loop_with(data), loop_terms=_loop_terms(data))
        problems = self._keyword_problems(data)
        if not dynamic and ("loop" in data or ctx.loop_with):
            problems.append(f"{short} in a loop (Ansible refuses it)")
        if raw.include_error:
            problems.append(raw.include_error)
        spec = data[action]
        apply = spec.get("apply") if isinstance(spec, dict) else None
        options = set(spec) - {"file", "name", "tasks_from", "apply"} if isinstance(spec, dict) else set()
        if options:
            problems.append(f"{short} options {', '.join(sorted(options))}")
        if apply is not None and (not isinstance(apply, dict) or set(apply) - {"tags", "become", "become_user",
                                                                             "environment", "ignore_errors",
                                                                             "no_log", "check_mode", "vars"}):
            problems.append(f"{short} apply: only tags, become, environment, vars, ignore_errors, no_log, check_mode")
        self._keywords(data, out, ctx)
        for key in ("register", "notify", "loop_control") if not dynamic else ("register", "notify"):
            out.pop(key, None)
        row = Row(out["id"], name, raw.where, short, "native")
        if problems:
            row.status, row.reason = "unsupported", problems[0]
            self.rows.append(row)
            out["jobs"] = [{"FAIL": {"msg": f"convert-role: {raw.where} ({name}) was not converted: {problems[0]}"}}]
            return out
        if not dynamic:
            out["block"] = self.tasks(raw.included or []) or [self._empty(name)]
            return out
        self.rows.append(row)
        out["dynamic"] = True
        if apply:
            out["apply"] = apply
        if raw.templated_include:
            out["include"] = raw.templated_include
        else:
            out["block"] = self.tasks(raw.included or []) or [self._empty(name)]
        return out

    def _empty(self, name: str) -> dict[str, Any]:
        return {"id": self.new_id(f"{name} empty"), "jobs": [{"DEBUG": {"msg": "empty include", "verbosity": 99}}]}


def split_action(data: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(module, args) as Ansible's ModuleArgsParser finds them: the one key that is not a keyword."""
    if "action" in data or "local_action" in data:
        key = "action" if "action" in data else "local_action"
        raise TaskError(f"{where}: the '{key}:' form is not supported; write the module as the task's key")
    candidates = [key for key in data if key not in ANSIBLE_KEYWORDS and not str(key).startswith("with_")]
    if len(candidates) != 1:
        what = "no module" if not candidates else f"more than one module ({', '.join(map(str, candidates))})"
        raise TaskError(f"{where}: task has {what}")
    module = str(candidates[0])
    raw_args = data[module]
    args: dict[str, Any]
    if isinstance(raw_args, dict):
        args = dict(raw_args)
    elif raw_args is None:
        args = {}
    else:
        args = _split_free_form(module, str(raw_args))
    extra = data.get("args")
    if isinstance(extra, dict):
        args.update(extra)
    return module, args


def _split_free_form(module: str, text: str) -> dict[str, Any]:
    """k=v text as Ansible splits it; free-form modules keep the command as _raw_params."""
    from ansible.parsing.splitter import parse_kv  # the exact splitting rules, as a plain library function

    free_form = modules.short_name(module) in ("command", "shell", "raw", "script", "include_vars", "meta",
                                               "win_command", "win_shell", "include_tasks", "import_tasks")
    return dict(parse_kv(text, check_raw=free_form))


def _loop_with(data: dict[str, Any]) -> str | None:
    keys = [key for key in data if str(key).startswith("with_")]
    return keys[0][len("with_"):] if keys else None


def _loop_terms(data: dict[str, Any]) -> Any:
    keys = [key for key in data if str(key).startswith("with_")]
    return data[keys[0]] if keys else None
