"""Orchestration inventories: which agent each host is, which services it runs, its variables.

    services: [services/web.yaml]     # relative to this file
    vars: {ntp_server: 10.0.0.1}      # every host
    hosts:
      web1: {agent: web1, services: [web], vars: {port: 8080}}
    groups:
      frontends: {hosts: [web1], services: [web], vars: {}}

Variables are layered as Ansible layers inventory variables: `vars` (all), then each group the
host is in (in file order), then the host's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerator import yamlfile
from accelerator.graph import schema


class InventoryError(ValueError):
    """An inventory that cannot be used; the text starts with FILE:LINE."""


@dataclass(slots=True)
class Host:
    name: str
    agent: str
    services: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Inventory:
    path: Path | None
    hosts: dict[str, Host]
    service_files: list[Path] = field(default_factory=list)
    localhost_agent: str = ""  # runs what tasks delegate to localhost (Ansible's implicit localhost)

    def groups(self) -> dict[str, list[str]]:
        """Ansible's `groups` magic variable: group -> host names, plus `all`."""
        members: dict[str, list[str]] = {"all": list(self.hosts), "ungrouped": []}
        for host in self.hosts.values():
            for group in host.groups:
                members.setdefault(group, []).append(host.name)
            if not host.groups:
                members["ungrouped"].append(host.name)
        return members


def load(path: Path) -> Inventory:
    try:
        document = schema.load_valid(path, "inventory")
    except schema.SchemaError as exc:
        raise InventoryError(str(exc)) from None
    common = yamlfile.plain(document.get("vars") or {})
    hosts: dict[str, Host] = {}
    for name, raw in document["hosts"].items():
        raw = raw or {}
        hosts[name] = Host(name=name, agent=raw.get("agent", name), services=list(raw.get("services") or []),
                           vars=dict(common))
    own_vars = {name: yamlfile.plain((raw or {}).get("vars") or {}) for name, raw in document["hosts"].items()}
    for group, raw in (document.get("groups") or {}).items():
        for member in raw.get("hosts") or []:
            if member not in hosts:
                raise InventoryError(f"{path}:{yamlfile.line_of(raw, 1)}: groups.{group}: unknown host {member!r}")
            host = hosts[member]
            host.groups.append(group)
            host.vars.update(yamlfile.plain(raw.get("vars") or {}))
            host.services.extend(s for s in raw.get("services") or [] if s not in host.services)
    for name, host in hosts.items():
        host.vars.update(own_vars[name])
    files = [path.parent / item for item in document.get("services") or []]
    return Inventory(path=path, hosts=hosts, service_files=files, localhost_agent=document.get("localhost_agent", ""))


def for_agents(agents: list[str], services: list[str]) -> Inventory:
    """The inventory `directord orchestrate SERVICE... --target AGENT` means: each agent runs all."""
    hosts = {agent: Host(name=agent, agent=agent, services=list(services)) for agent in agents}
    return Inventory(path=None, hosts=hosts)
