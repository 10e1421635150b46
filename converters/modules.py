"""Per-module translation: native jobs where the behaviour is exactly the module's, else a fallback.

Each translator gets the module's arguments (a map; free-form text already split the way
Ansible splits it) and returns the jobs.  `Fallback(reason)` keeps the original module as an
ANSIBLE job, which is exact for modules that Ansible runs without a controller-side action
plugin.  `Unsupported(reason)` is for what neither can do exactly (an action plugin with no
native equivalent here, an async task, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BUILTIN_PREFIXES = ("ansible.builtin.", "ansible.legacy.")

# Modules whose action plugin does work on the controller that an ANSIBLE job would skip.
CONTROLLER_ACTIONS = {
    "add_host", "assemble", "fetch", "gather_facts", "group_by", "pause", "raw", "reboot",
    "script", "set_stats", "validate_argument_spec", "wait_for_connection", "dnf", "yum",
}
_OCTAL = re.compile(r"^0?[0-7]{3,4}$")


class Fallback(Exception):
    """Keep the module, as an ANSIBLE job; the text says why no native verb is used.

    `jobs` replaces the plain ANSIBLE job of the original module when the fallback must pick
    the module the way an action plugin does (package, service).
    """

    def __init__(self, reason: str, jobs: list[dict[str, Any]] | None = None) -> None:
        super().__init__(reason)
        self.jobs = jobs


class Unsupported(Exception):
    """Neither native nor the module alone would behave as Ansible does; the text says why."""


@dataclass(slots=True)
class Context:
    """What translators may look at besides the arguments."""

    role_path: Path
    loop_with: str | None = None
    loop_terms: Any = None
    loop_consumed: bool = False  # the translation used the loop itself (with_first_found)
    facts_needed: set[str] = field(default_factory=set)  # gather_facts subsets the service needs


def short_name(module: str) -> str:
    for prefix in BUILTIN_PREFIXES:
        if module.startswith(prefix):
            return module[len(prefix):]
    return module


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _only(args: dict[str, Any], allowed: set[str], module: str) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise Fallback(f"{module}: argument(s) {', '.join(extra)} have no native equivalent")


def set_fact(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    values = {k: v for k, v in args.items() if k != "cacheable"}
    if not values:
        raise Unsupported("set_fact without variables")
    return [{"ARG": values}]


def debug(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    unknown = set(args) - {"msg", "var", "verbosity"}
    if unknown:
        raise Unsupported(f"debug: unknown argument(s) {', '.join(sorted(unknown))}")
    return [{"DEBUG": dict(args)}]


def fail(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    return [{"FAIL": {"msg": args["msg"]} if "msg" in args else {}}]


def assert_(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    unknown = set(args) - {"that", "msg", "fail_msg", "success_msg", "quiet"}
    if unknown or "that" not in args:
        raise Unsupported("assert: needs 'that'" if "that" not in args else
                          f"assert: unknown argument(s) {', '.join(sorted(unknown))}")
    return [{"ASSERT": dict(args)}]


def include_vars(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    spec = dict(args)
    if "_raw_params" in spec:
        spec["file"] = spec.pop("_raw_params")
    unknown = set(spec) - {"file", "name"}
    if unknown:
        raise Unsupported(f"include_vars: {', '.join(sorted(unknown))} not supported (only a file, or first_found)")
    if ctx.loop_with == "first_found":
        terms = ctx.loop_terms if isinstance(ctx.loop_terms, list) else [ctx.loop_terms]
        if not all(isinstance(t, (str, dict)) for t in terms):
            raise Unsupported("include_vars with_first_found: terms must be file names or files/paths maps")
        if any(isinstance(t, dict) and set(t) - {"files", "paths", "skip"} for t in terms):
            raise Unsupported("include_vars with_first_found: only the files, paths and skip options")
        ctx.loop_consumed = True
        return [{"VARS": {k: v for k, v in spec.items() if k != "file"} | {"first_found": terms}}]
    if ctx.loop_with:
        raise Unsupported(f"include_vars with with_{ctx.loop_with}")
    return [{"VARS": spec}]


def command(args: dict[str, Any], ctx: Context, shell: bool = False) -> list[dict[str, Any]]:
    module = "shell" if shell else "command"
    spec = dict(args)
    text = spec.pop("_raw_params", None) or spec.pop("cmd", None)
    if "argv" in spec:
        raise Fallback(f"{module}: argv form")
    if text is None:
        raise Unsupported(f"{module}: no command given")
    run: dict[str, Any] = {"command": text}
    if not shell:
        run["argv"] = True
    if "chdir" in spec:
        run["cwd"] = spec.pop("chdir")
    for key in ("creates", "removes"):
        if key in spec:
            run[key] = spec.pop(key)
    if spec.pop("strip_empty_ends", True) is not True or spec.pop("expand_argument_vars", True) is not True:
        raise Fallback(f"{module}: strip_empty_ends / expand_argument_vars changed")
    if spec:
        raise Fallback(f"{module}: argument(s) {', '.join(sorted(spec))} have no native equivalent")
    return [{"RUN": run}]


def file(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    spec = dict(args)
    for alias in ("dest", "name"):
        if alias in spec:
            spec["path"] = spec.pop(alias)
    _only(spec, {"path", "state", "mode", "owner", "group", "src"}, "file")
    state = spec.get("state", "file")
    if _templated(state) or state not in ("file", "directory", "touch", "absent", "link"):
        raise Fallback(f"file: state {state!r} is not one the native verb knows")
    mode = spec.get("mode")
    if mode is not None and not isinstance(mode, int) and not (isinstance(mode, str) and _OCTAL.match(mode)):
        raise Fallback(f"file: mode {mode!r} is not a fixed octal mode")
    if state == "link" and "src" not in spec:
        raise Fallback("file: state=link without src")
    return [{"FILE": spec}]


def copy(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    spec = dict(args)
    if spec.get("remote_src") in (True, "yes", "true", "True"):
        raise Fallback("copy with remote_src: the module alone does it")
    spec.pop("remote_src", None)
    allowed = {"src", "content", "dest", "mode", "owner", "group", "force", "directory_mode", "validate"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise Unsupported(f"copy: argument(s) {', '.join(extra)} need the copy action plugin")
    if ("src" in spec) == ("content" in spec):
        raise Unsupported("copy: needs exactly one of src and content")
    src = spec.get("src")
    if isinstance(src, str) and not _templated(src) and not (ctx.role_path / "files" / src).exists():
        raise Unsupported(f"copy: {src} is not in the role's files/")
    _check_mode(spec.get("mode"), "copy")
    return [{"WRITE": spec}]


def template(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    spec = dict(args)
    extra = sorted(set(spec) - {"src", "dest", "mode", "owner", "group", "force"})
    if extra:
        raise Unsupported(f"template: argument(s) {', '.join(extra)} need the template action plugin")
    if "src" not in spec or "dest" not in spec:
        raise Unsupported("template: needs src and dest")
    src = spec["src"]
    if isinstance(src, str) and not _templated(src) and not (ctx.role_path / "templates" / src).is_file():
        raise Unsupported(f"template: {src} is not in the role's templates/")
    _check_mode(spec.get("mode"), "template")
    return [{"TEMPLATE": spec}]


def _check_mode(mode: Any, module: str) -> None:
    if mode is not None and not isinstance(mode, int) and not (isinstance(mode, str) and (_OCTAL.match(mode) or _templated(mode))):
        raise Unsupported(f"{module}: mode {mode!r} is not an octal mode")


def async_status(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    if set(args) - {"jid", "mode"}:
        raise Unsupported(f"async_status: {', '.join(sorted(set(args) - {'jid', 'mode'}))}")
    return [{"ASYNC_STATUS": dict(args)}]


def meta(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    action = args.get("_raw_params")
    if action == "flush_handlers":
        return [{"META": "flush_handlers"}]
    if action == "noop":
        return [{"DEBUG": {"msg": "noop", "verbosity": 99}}]
    raise Unsupported(f"meta: {action}")


def by_facts(module: str, fact: str, default: str) -> Callable[[dict[str, Any], Context], list[dict[str, Any]]]:
    """package / service: their action plugin runs the module the host's facts name; so does this job."""

    def translate(args: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
        spec = dict(args)
        use = spec.pop("use", "auto")
        if use == "auto":
            ctx.facts_needed.add("min")
            use = "{{ ansible_facts['%s'] | default('%s') }}" % (fact, default)
        raise Fallback(f"{module}: runs the module that the host's {fact} fact names, as its action plugin does",
                       jobs=[{"ANSIBLE": {"module": f"ansible.legacy.{use}", "args": spec}}])

    return translate


def fallback_jobs(error: Fallback, module: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The ANSIBLE job(s) a Fallback stands for."""
    if error.jobs is not None:
        return error.jobs
    name = module if "." in module else f"ansible.builtin.{module}"
    return [{"ANSIBLE": {"module": name, "args": args}}]


TRANSLATORS: dict[str, Callable[[dict[str, Any], Context], list[dict[str, Any]]]] = {
    "set_fact": set_fact,
    "debug": debug,
    "fail": fail,
    "assert": assert_,
    "include_vars": include_vars,
    "command": command,
    "shell": lambda args, ctx: command(args, ctx, shell=True),
    "file": file,
    "copy": copy,
    "template": template,
    "meta": meta,
    "async_status": async_status,
    "package": by_facts("package", "pkg_mgr", "apt"),
    "service": by_facts("service", "service_mgr", "service"),
}
