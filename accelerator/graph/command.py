"""`directord orchestrate` for services: load, validate, plan, then run (or only print the plan)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from accelerator.graph import dag, inventory, service
from accelerator.graph.runner import RunOptions, Runner, RunReport


class GraphUsageError(ValueError):
    """A problem with the files or options; printed as one line."""


def orchestrate(args: argparse.Namespace) -> int:
    services, hosts, graph = _load(args)
    if args.dry_run:
        _print_plan(args, graph, hosts)
        return 0
    from accelerator.client import Client
    from accelerator.store import open_store

    store = open_store(args.checkpoints or f"sqlite:///{args.home / 'checkpoints.db'}")
    options = RunOptions(name=args.name, restart=args.restart, extra_vars=_extra_vars(args.extra_vars),
                         job_timeout=args.wait_timeout, check=args.check,
                         rollback_on_failure=args.rollback_on_failure, tags=_split(args.tags),
                         skip_tags=_split(args.skip_tags))
    try:
        with Client(args.home, timeout=args.request_timeout) as client:
            progress = sys.stderr if args.json else sys.stdout  # keep stdout pure JSON
            report = Runner(services, hosts, client, store, options, out=progress, graph=graph).run()
    finally:
        store.close()
    _print_recap(report, args.json)
    return 0 if report.ok else 1


def _load(args: argparse.Namespace) -> tuple[list[service.Service], inventory.Inventory, Any]:
    """The services, the inventory, and the graph (built here once: it is also the last check)."""
    try:
        hosts = inventory.load(args.inventory) if args.inventory else None
        files = [Path(p) for p in args.files] + (hosts.service_files if hosts else [])
        if not files:
            raise GraphUsageError("no service files: name them, or list them under 'services' in the inventory")
        services = [service.load(path) for path in files]
    except (service.ServiceError, inventory.InventoryError) as exc:
        raise GraphUsageError(str(exc)) from None
    names = [s.name for s in services]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise GraphUsageError(f"service(s) loaded twice: {', '.join(sorted(duplicates))}")
    if hosts is None:
        if not args.target:
            raise GraphUsageError("say where the services run: --inventory FILE, or --target AGENT (repeatable)")
        hosts = inventory.for_agents(args.target, names)
    try:
        graph = dag.build(services)
    except service.ServiceError as exc:
        raise GraphUsageError(str(exc)) from None
    return services, hosts, graph


def _print_plan(args: argparse.Namespace, graph: Any, hosts: inventory.Inventory) -> None:
    if args.graph == "dot":
        sys.stdout.write(dag.as_dot(graph))
        return
    if args.graph == "svg":
        try:
            sys.stdout.write(dag.as_svg(graph))
        except RuntimeError as exc:
            raise GraphUsageError(str(exc)) from None
        return
    for host in hosts.hosts.values():
        print(f"host {host.name} (agent {host.agent}): {', '.join(host.services) or 'no services'}")
    print(dag.as_text(graph))


def _split(values: list[str]) -> list[str]:
    return [tag.strip() for value in values for tag in value.split(",") if tag.strip()]


def _extra_vars(items: list[str]) -> dict[str, Any]:
    """ansible-playbook's -e forms: key=value words, a YAML/JSON map, or @file."""
    values: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            try:
                loaded = yaml.safe_load(Path(item[1:]).read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise GraphUsageError(f"-e {item}: {exc}") from None
        elif item.lstrip().startswith("{"):
            try:
                loaded = yaml.safe_load(item)
            except yaml.YAMLError as exc:
                raise GraphUsageError(f"-e {item}: {exc}") from None
        else:
            loaded = {}
            for word in item.split():
                key, sep, value = word.partition("=")
                if not sep:
                    raise GraphUsageError(f"-e {item}: expected key=value, a map, or @FILE")
                loaded[key] = value
        if not isinstance(loaded, dict):
            raise GraphUsageError(f"-e {item}: must give a map of variables")
        values.update(loaded)
    return values


def _print_recap(report: RunReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"records": [r.to_wire() for r in report.records],
                          "recap": {h: vars_of(r) for h, r in report.recap.items()},
                          "failed_hosts": report.failed_hosts}, indent=2))
        return
    print("\nRECAP")
    for host, recap in report.recap.items():
        print(f"{host:<24} ok={recap.ok} changed={recap.changed} failed={recap.failed} skipped={recap.skipped} "
              f"rescued={recap.rescued} ignored={recap.ignored} resumed={recap.resumed}")
    for host, reason in report.failed_hosts.items():
        print(f"{host}: {reason}")


def vars_of(recap: Any) -> dict[str, int]:
    return {name: getattr(recap, name) for name in recap.__dataclass_fields__}
