"""The dependency graph: one node per top-level task, edges from requires / needed-by / provides.

A name in `requires` or `needed-by` is looked up as: a label some task `provides`, a task id of
the same service, a full `service.task` id, or a service name (every task of that service).
A service's own `requires` orders all of its tasks after all tasks of the required service.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Iterable

import networkx as nx

from accelerator.graph.service import Service, ServiceError, Task


def build(services: Iterable[Service]) -> nx.DiGraph:
    """The DAG of every task of `services`; a cycle or an unknown name raises ServiceError."""
    by_name = {service.name: service for service in services}
    graph: nx.DiGraph = nx.DiGraph()
    for service in by_name.values():
        for order, task in enumerate(service.tasks):
            graph.add_node(task.id, task=task, service=service.name, order=order)
    labels: dict[str, list[str]] = {}
    for service in by_name.values():
        for task in service.tasks:
            for label in task.provides:
                labels.setdefault(label, []).append(task.id)
    for service in by_name.values():
        for task in service.tasks:
            for name in task.requires:
                for before in _resolve(name, task, by_name, labels):
                    _edge(graph, before, task.id)
            for name in task.needed_by:
                for after in _resolve(name, task, by_name, labels):
                    _edge(graph, task.id, after)
        for required in service.requires:
            if required not in by_name:
                raise ServiceError(f"{service.path}: requires service {required!r}, which is not loaded")
            for earlier in by_name[required].tasks:
                for later in service.tasks:
                    _edge(graph, earlier.id, later.id)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return graph
    path = " -> ".join(edge[0] for edge in cycle) + f" -> {cycle[0][0]}"
    raise ServiceError(f"{graph.nodes[cycle[0][0]]['task'].where}: dependency cycle: {path}")


def _edge(graph: nx.DiGraph, before: str, after: str) -> None:
    if before != after:
        graph.add_edge(before, after)


def _resolve(name: str, task: Task, services: dict[str, Service], labels: dict[str, list[str]]) -> list[str]:
    if name in labels:
        return labels[name]
    local = services[task.service]
    for candidate in local.tasks:
        if candidate.local_id == name:
            return [candidate.id]
    service_name, _, local_id = name.partition(".")
    if service_name in services:
        if not local_id:
            return [t.id for t in services[service_name].tasks]
        for candidate in services[service_name].tasks:
            if candidate.local_id == local_id:
                return [candidate.id]
    raise ServiceError(f"{task.where}: {task.local_id} requires or is needed by {name!r}, "
                       "which no loaded task or service provides")


def order(graph: nx.DiGraph) -> list[str]:
    """A stable topological order: among ready nodes, services in load order, tasks in file order."""
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: (graph.nodes[n]["order"], n)))


def as_text(graph: nx.DiGraph) -> str:
    """The plan as levels: every node of a level can run once the levels above it are done."""
    lines = []
    for level, nodes in enumerate(nx.topological_generations(graph), 1):
        lines.append(f"level {level}:")
        for node in sorted(nodes, key=lambda n: (graph.nodes[n]["service"], graph.nodes[n]["order"])):
            task: Task = graph.nodes[node]["task"]
            after = ", ".join(sorted(graph.predecessors(node)))
            lines.append(f"  {node}  {task.title!r}" + (f"  (after {after})" if after else ""))
    return "\n".join(lines)


def as_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT text, one cluster per service."""
    lines = ["digraph orchestration {", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
    services: dict[str, list[str]] = {}
    for node, data in graph.nodes(data=True):
        services.setdefault(data["service"], []).append(node)
    for index, (service, nodes) in enumerate(services.items()):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f"    label={_quote(service)};")
        for node in nodes:
            task: Task = graph.nodes[node]["task"]
            lines.append(f"    {_quote(node)} [label={_quote(task.title)}];")
        lines.append("  }")
    for before, after in graph.edges:
        lines.append(f"  {_quote(before)} -> {_quote(after)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def as_svg(graph: nx.DiGraph) -> str:
    """SVG drawn by Graphviz's `dot` program (Debian package graphviz)."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("drawing SVG needs Graphviz's 'dot' program (apt install graphviz); "
                           "--graph dot prints the DOT text instead")
    return subprocess.run([dot, "-Tsvg"], input=as_dot(graph), capture_output=True, text=True, check=True).stdout


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
