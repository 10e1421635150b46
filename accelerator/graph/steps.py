"""The controller verbs: steps the graph runner carries out itself, without an agent round trip.

Each takes the task's already templated arguments and returns what the Ansible action it
stands for would register.  ARG is set_fact, VARS is include_vars, DEBUG, FAIL and ASSERT are
their namesakes.  They change the host's variables through the `VariableSink` they are given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import yaml

from accelerator.graph.templating import Evaluator, TemplateError


class StepError(ValueError):
    """Arguments a controller verb cannot use; becomes the task's failure message."""


class VariableSink(Protocol):
    def set_facts(self, values: dict[str, Any]) -> None: ...

    def include_vars(self, values: dict[str, Any]) -> None: ...


def arg(spec: Any, evaluator: Evaluator, sink: VariableSink, vars_dir: Path) -> dict[str, Any]:
    """set_fact: every key becomes a host variable (above inventory, role vars and include_vars)."""
    if not isinstance(spec, dict) or not spec:
        raise StepError("ARG takes a map of variable names to values")
    values = evaluator.template(spec)
    values.pop("cacheable", None)
    sink.set_facts(values)
    return {"changed": False, "ansible_facts": values}


def vars_(spec: Any, evaluator: Evaluator, sink: VariableSink, vars_dir: Path) -> dict[str, Any]:
    """include_vars: `file`, or the first that exists of `first_found`, looked up in the vars dir."""
    spec = evaluator.template(spec if isinstance(spec, dict) else {"file": spec})
    skip = False
    if "first_found" in spec:
        candidates, skip = first_found(spec["first_found"])
    else:
        candidates = [spec["file"]] if spec.get("file") else []
    if not candidates and not skip:
        raise StepError("VARS needs 'file' or 'first_found'")
    for candidate in candidates:
        path = Path(candidate) if Path(candidate).is_absolute() else vars_dir / candidate
        if path.is_file():
            break
    else:
        if skip:
            return {"changed": False, "skipped": True, "skipped_reason": "No items in the list"}
        raise StepError(f"No file was found when using first_found: {', '.join(map(str, candidates))}"
                        if "first_found" in spec else f"Could not find or access '{candidates[0]}'")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise StepError(f"cannot load {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise StepError(f"{path} must hold a map of variables")
    if spec.get("name"):
        loaded = {spec["name"]: loaded}
    sink.include_vars(loaded)
    return {"changed": False, "ansible_facts": loaded, "ansible_included_var_files": [str(path)]}


def first_found(terms: Any) -> tuple[list[str], bool]:
    """The paths the first_found lookup tries, in its order, and whether it may find none (skip)."""
    candidates: list[str] = []
    skip = False
    for term in terms if isinstance(terms, list) else [terms]:
        if isinstance(term, dict):
            files = _split(term.get("files", []), ",;")
            paths = _split(term.get("paths", []), ",:;")
            skip = skip or bool(term.get("skip", False))
            candidates += [f"{path}/{name}" for path in paths for name in files] if paths else files
        elif isinstance(term, list):
            more, more_skip = first_found(term)
            candidates += more
            skip = skip or more_skip
        else:
            candidates.append(str(term))
    return candidates, skip


def _split(value: Any, separators: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    found: list[str] = []
    for item in items:
        text = str(item)
        for separator in separators[1:]:
            text = text.replace(separator, separators[0])
        found += [part for part in text.split(separators[0]) if part]
    return found


def debug(spec: Any, evaluator: Evaluator, sink: VariableSink, vars_dir: Path) -> dict[str, Any]:
    spec = spec if isinstance(spec, dict) else {"msg": spec}
    if int(evaluator.template(spec.get("verbosity", 0)) or 0) > 0:  # runs print at verbosity 0
        return {"changed": False, "skipped": True, "skipped_reason": "Verbosity threshold not met."}
    if "var" in spec:
        name = str(spec["var"])
        try:
            value = evaluator.template(_expression(name))
        except TemplateError:
            value = "VARIABLE IS NOT DEFINED!"
        return {"changed": False, name: value}
    return {"changed": False, "msg": evaluator.template(spec.get("msg", "Hello world!"))}


def fail(spec: Any, evaluator: Evaluator, sink: VariableSink, vars_dir: Path) -> dict[str, Any]:
    spec = spec if isinstance(spec, dict) else {"msg": spec}
    return {"changed": False, "failed": True, "msg": evaluator.template(spec.get("msg", "Failed as requested from task"))}


def assert_(spec: Any, evaluator: Evaluator, sink: VariableSink, vars_dir: Path) -> dict[str, Any]:
    if not isinstance(spec, dict) or "that" not in spec:
        raise StepError("ASSERT needs 'that': a condition or a list of them")
    conditions = spec["that"] if isinstance(spec["that"], list) else [spec["that"]]
    for condition in conditions:
        if not evaluator.condition(condition):
            message = spec.get("fail_msg", spec.get("msg", "Assertion failed"))
            return {"changed": False, "failed": True, "assertion": condition, "evaluated_to": False,
                    "msg": evaluator.template(message)}
    return {"changed": False, "msg": evaluator.template(spec.get("success_msg", "All assertions passed"))}


def _expression(name: str) -> Any:
    from accelerator.graph.templating import trusted

    return trusted("{{ " + name + " }}")


STEPS: dict[str, Callable[[Any, Evaluator, VariableSink, Path], dict[str, Any]]] = {
    "ARG": arg,
    "VARS": vars_,
    "DEBUG": debug,
    "FAIL": fail,
    "ASSERT": assert_,
}
