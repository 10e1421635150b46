"""Edges from data flow: which earlier tasks a task must wait for.

A task must follow an earlier one unless they are proven independent: neither runs arbitrary
code (RUN, ANSIBLE, ...), neither reads a variable the other sets, they set no variable in common,
and the paths they write are unrelated (not equal, not one inside the other).  Anything not
known for certain (a templated path, a lookup that can read any variable) counts as a conflict,
so the original order is kept wherever independence is not proven.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import jinja2
import jinja2.meta
import networkx as nx

EVERYTHING = "*"
# Verbs whose effects on the host are known from their arguments alone.
# FAIL and ASSERT are not among them: they are guards, and what follows a guard must wait for it.
KNOWN_EFFECTS = {"ARG", "VARS", "DEBUG", "FILE", "WRITE", "TEMPLATE"}
_EXPRESSION_KEYS = ("when", "changed_when", "failed_when", "until")
_READS_ANYTHING = {"hostvars", "vars", "lookup", "query", "q"}
_environment = jinja2.Environment()


@dataclass(slots=True)
class Effects:
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    paths: set[str | None] = field(default_factory=set)  # None: a path not known before the run
    opaque: bool = False

    def merge(self, other: Effects) -> None:
        self.reads |= other.reads
        self.writes |= other.writes
        self.paths |= other.paths
        self.opaque = self.opaque or other.opaque


def effects(task: dict[str, Any]) -> Effects:
    found = Effects()
    local = {"item", "ansible_loop", "ansible_loop_var", "ansible_index_var"}
    control = task.get("loop_control") or {}
    local |= {control[k] for k in ("loop_var", "index_var") if isinstance(control.get(k), str)}
    for key in _EXPRESSION_KEYS:
        for expression in task.get(key) if isinstance(task.get(key), list) else [task.get(key)]:
            if isinstance(expression, str):
                found.reads |= _names("{{ " + expression + " }}")
    for key in ("loop", "vars", "environment", "ignore_errors", "retries", "delay", "become", "run_once", "no_log"):
        found.reads |= _names_in(task.get(key))
    if task.get("register"):
        found.writes.add(task["register"])
    if task.get("delegate_to") or task.get("run_once") or task.get("include"):
        found.opaque = True
    for job in task.get("jobs") or []:
        verb, spec = next(iter(job.items()))
        found.reads |= _names_in(spec)
        _job_effects(verb, spec, found)
    for part in ("block", "rescue", "always"):
        for child in task.get(part) or []:
            found.merge(effects(child))
    found.reads -= local
    own_vars = task.get("vars")
    found.reads -= set(own_vars) if isinstance(own_vars, dict) else set()
    return found


def _job_effects(verb: str, spec: Any, found: Effects) -> None:
    if verb == "ASSERT" and isinstance(spec, dict):  # bare expressions, as `when`
        that = spec.get("that")
        for expression in that if isinstance(that, list) else [that]:
            if isinstance(expression, str):
                found.reads |= _names("{{ " + expression + " }}")
    if verb == "DEBUG" and isinstance(spec, dict) and isinstance(spec.get("var"), str):
        found.reads |= _names("{{ " + spec["var"] + " }}")
    if verb not in KNOWN_EFFECTS:
        found.opaque = True
    elif verb == "ARG":
        found.writes |= set(spec)
    elif verb == "VARS":
        found.writes.add(EVERYTHING)
    elif verb in ("FILE", "WRITE", "TEMPLATE"):
        path = spec.get("path") if verb == "FILE" else spec.get("dest")
        templated = not isinstance(path, str) or "{{" in path or "{%" in path
        found.paths.add(None if templated else posixpath.normpath(path))
        if verb == "FILE" and spec.get("src") is not None:
            found.paths.add(None)  # a link's target may be anywhere


def _names_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return _names(value) if ("{{" in value or "{%" in value) else set()
    if isinstance(value, dict):
        return set().union(*(_names_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_names_in(v) for v in value)) if value else set()
    return set()


def template_names(text: str) -> set[str]:
    """Variables a template's text reads."""
    return _names(text)


def _names(template: str) -> set[str]:
    try:
        names = set(jinja2.meta.find_undeclared_variables(_environment.parse(template)))
    except jinja2.TemplateSyntaxError:
        return {EVERYTHING}
    return names | ({EVERYTHING} if names & _READS_ANYTHING else set())


def independent(earlier: Effects, later: Effects) -> bool:
    if earlier.opaque or later.opaque:
        return False
    if _meets(earlier.writes, later.reads) or _meets(later.writes, earlier.reads) or _meets(earlier.writes, later.writes):
        return False
    return not _paths_meet(earlier.paths, later.paths)


def _meets(writes: set[str], reads: set[str]) -> bool:
    if not writes or not reads:
        return False
    return EVERYTHING in writes or EVERYTHING in reads or bool(writes & reads)


def _paths_meet(first: set[str | None], second: set[str | None]) -> bool:
    if not first or not second:
        return False
    if None in first or None in second:
        return True
    return any(a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")
               for a in first for b in second if a and b)


def requirements(tasks: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Task id -> ids of the earlier tasks it must wait for (transitively reduced)."""
    graph: nx.DiGraph = nx.DiGraph()
    found = [(task["id"], effects(task)) for task in tasks]
    for index, (task_id, task_effects) in enumerate(found):
        graph.add_node(task_id)
        for earlier_id, earlier_effects in found[:index]:
            if not independent(earlier_effects, task_effects):
                graph.add_edge(earlier_id, task_id)
    reduced = nx.transitive_reduction(graph)
    position = {task_id: index for index, (task_id, _) in enumerate(found)}
    return {task_id: sorted(reduced.predecessors(task_id), key=position.__getitem__) for task_id, _ in found}
