"""Run services on agents in dependency order, with live progress, checkpoints and resume.

The runner is a single-threaded scheduler.  Each (host, task) is a generator from
`accelerator.graph.unit`; when its requirements are done on that host it is started, and it
runs until it asks for agent jobs.  Those are submitted at once, and many hosts and independent
branches are in flight together; results wake their generators.  Templating happens here, on the
controller, with Ansible's Templar, so agents only receive finished arguments.

Every finished (host, task) is checkpointed in the store with what it changed in the host's
variables.  A run that fails keeps its checkpoints, so the next run resumes after the last
success (`restart=True` starts over); a run that succeeds clears them.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import networkx as nx

from accelerator import components
from accelerator.client import Client
from accelerator.components.base import ComponentError
from accelerator.graph import dag, steps, unit
from accelerator.graph.inventory import Host, Inventory
from accelerator.graph.service import Service, Task
from accelerator.graph.templating import trusted
from accelerator.graph.unit import HostFailed, Scope, Sleep, Status, Submit, TaskRecord
from accelerator.model import JobResult, JobSpec, new_id
from accelerator.store.base import Store

FACTS_NODE = "(facts)"
LOCALHOST_NAMES = ("localhost", "127.0.0.1", "::1")
HANDLERS_NODE = "(handlers)"
ROLLBACK_NODE = "(rollback)"


@dataclass(slots=True)
class RunOptions:
    name: str = ""  # checkpoint namespace; default: derived from the services and hosts
    restart: bool = False
    extra_vars: dict[str, Any] = field(default_factory=dict)
    check: bool = False
    job_timeout: float | None = None
    rollback_on_failure: bool = False
    tags: list[str] = field(default_factory=list)  # as ansible-playbook --tags (empty: all)
    skip_tags: list[str] = field(default_factory=list)


@dataclass(slots=True)
class HostRecap:
    ok: int = 0
    changed: int = 0
    skipped: int = 0
    failed: int = 0
    ignored: int = 0
    rescued: int = 0
    resumed: int = 0

    def count(self, record: TaskRecord) -> None:
        if record.status is Status.SKIPPED:
            self.skipped += 1
            return
        if record.status is Status.FAILED and not record.ignored:
            self.failed += 1
            return
        self.ok += 1
        if record.status is Status.CHANGED:
            self.changed += 1
        if record.ignored:
            self.ignored += 1
        if record.rescued:
            self.rescued += 1


@dataclass(slots=True)
class RunReport:
    records: list[TaskRecord]
    recap: dict[str, HostRecap]
    failed_hosts: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.failed_hosts


class HostState:
    """One host's variables and notifications during a run (the `HostEnv` a task sees)."""

    def __init__(self, runner: Runner, host: Host) -> None:
        self.runner = runner
        self.host = host
        self.name = host.name
        self.facts: dict[str, Any] = {}
        self.included: dict[str, Any] = {}
        self.set_facts_: dict[str, Any] = {}
        self.notified: list[str] = []
        self.effects: dict[str, Any] = {}  # what the running unit changed, for its checkpoint
        self.failed: str = ""
        self.failed_service: str = ""
        self.completed: list[str] = []  # finished nodes, in the order they finished (resumed ones first)
        self.rolled_back = False

    # -- variables --------------------------------------------------------------------------

    def variables(self, task: Task, extra: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
        service = self.runner.services[task.service]
        layers: dict[str, Any] = {}
        required_services = self.runner.required_services(service)
        for required in required_services:
            layers.update(trusted(required.defaults))
        layers.update(trusted(service.defaults))
        layers.update(trusted(self.host.vars))
        layers.update(self.facts)
        if self.facts:
            layers["ansible_facts"] = {k.removeprefix("ansible_"): v for k, v in self.facts.items()}
        for required in required_services:
            layers.update(trusted(required.vars))
        layers.update(trusted(service.vars))
        layers.update(extra)
        layers.update(self.included)
        layers.update(self.set_facts_)
        layers.update(current or {})  # the result being judged, under its register name
        layers.update(trusted(self.runner.options.extra_vars))
        layers.update(self.runner.magic(self, service))
        return layers

    def set_facts(self, values: dict[str, Any]) -> None:
        self.set_facts_.update(values)
        self.effects.setdefault("set_facts", {}).update(values)

    def include_vars(self, values: dict[str, Any]) -> None:
        self.included.update(values)
        self.effects.setdefault("include_vars", {}).update(values)

    def register(self, name: str, value: Any) -> None:
        self.set_facts({name: value})

    def notify(self, names: list[str]) -> None:
        for name in names:
            if name not in self.notified:
                self.notified.append(name)
        self.effects.setdefault("notified", []).extend(names)

    def apply(self, effects: dict[str, Any]) -> None:
        """Replay what a checkpointed task did, so later tasks see the same variables."""
        self.set_facts_.update(effects.get("set_facts", {}))
        self.facts.update(effects.get("facts", {}))
        self.included.update(effects.get("include_vars", {}))
        for name in effects.get("notified", []):
            if name not in self.notified:
                self.notified.append(name)

    # -- jobs -------------------------------------------------------------------------------

    def agent_for(self, host: str) -> str:
        return self.runner.agent_for(host)

    def service(self, name: str) -> Service:
        return self.runner.services[name]

    def build_job(self, task: Task, verb: str, args: Any, base_dir: Path, env: dict[str, str],
                  delegate: str | None, run_as: str = "") -> Submit:
        try:
            parsed = self.runner.parse_job(verb, args, base_dir)
        except ComponentError as exc:
            if verb != "FILE" or not isinstance(args, dict):
                raise steps.StepError(str(exc)) from None
            # Arguments the native verb does not take (known only now, once templated): the file
            # module itself does exactly what the task asked.
            module_args = {k: v for k, v in args.items() if k != "check"}
            if args.get("check"):
                module_args["_ansible_check_mode"] = True
            verb, args = "ANSIBLE", {"module": "ansible.builtin.file", "args": module_args}
            parsed = components.get(verb).parse(args, base_dir=base_dir)
        wire = dict(parsed.args)
        if verb == "RUN":
            wire["no_template"] = True  # templated here already, with Ansible's rules
            wire["env"] = {**wire.get("env", {}), **{k: str(v) for k, v in env.items()}}
        elif verb == "ANSIBLE" and env:
            wire["env"] = {k: str(v) for k, v in env.items()}
        target = self.agent_for(delegate) if delegate else self.host.agent
        spec = JobSpec(verb=components.component_class(verb).verb, args=wire, targets=[target],
                       timeout=parsed.timeout or self.runner.options.job_timeout, blobs=sorted(parsed.uploads),
                       label=f"{self.name} {task.id}"[:200], async_parent=True, run_as=run_as)
        return Submit([spec], dict(parsed.uploads))

    def flush_handlers(self) -> unit.Steps:
        for service_name in self.host.services:
            yield from self.runner.handlers(self, self.runner.services[service_name])

    def record(self, record: TaskRecord) -> None:
        self.runner.finished_task(self, record)

    def selected(self, tags: list[str], is_block: bool) -> bool:
        return is_block or tags_select(set(tags), set(self.runner.options.tags or ["all"]),
                                       set(self.runner.options.skip_tags))

    def check_mode(self) -> bool:
        return self.runner.options.check

    def inventory_vars(self) -> dict[str, Any]:
        return dict(self.host.vars)

    def new_async_id(self) -> str:
        return f"j{new_id()[:12]}"

    def start_background(self, jid: str, submit: Submit, registered: Any) -> None:
        self.runner.start_background(self, jid, submit, registered)

    def async_result(self, jid: str) -> tuple[bool, dict[str, Any] | None]:
        return jid in self.runner.async_jobs, self.runner.async_jobs.get(jid)

    def run_once(self, task: Task, result: dict[str, Any] | None = None) -> dict[str, Any] | None:
        if result is not None:
            self.runner.once_results[task.id] = result
        return self.runner.once_results.get(task.id)

    def add_facts(self, facts: dict[str, Any]) -> None:
        self.facts.update(facts)
        self.effects.setdefault("facts", {}).update(facts)


@dataclass(slots=True)
class _Unit:
    host: HostState
    node: str
    steps: unit.Steps
    started: float
    waiting: dict[str, int] = field(default_factory=dict)  # job id -> index in the batch
    answers: list[JobResult | None] = field(default_factory=list)
    effects: dict[str, Any] = field(default_factory=dict)  # variables set, handlers notified, changed


class Runner:
    def __init__(self, services: list[Service], inventory: Inventory, client: Client, store: Store,
                 options: RunOptions | None = None, out: TextIO = sys.stdout, graph: nx.DiGraph | None = None) -> None:
        self.services = {service.name: service for service in services}
        self.inventory = inventory
        self.client = client
        self.store = store
        self.options = options or RunOptions()
        self.out = out
        self.graph = graph if graph is not None else dag.build(services)
        self.order = dag.order(self.graph)
        self._check_services()
        for host in inventory.hosts.values():  # a service's requirements run on its hosts first
            host.services = [s.name for name in host.services for s in [*self.required_services(self.services[name]),
                                                                        self.services[name]]]
            host.services = list(dict.fromkeys(host.services))
        self.hosts = {name: HostState(self, host) for name, host in inventory.hosts.items()}
        self.records: list[TaskRecord] = []
        self.recap = {name: HostRecap() for name in self.hosts}
        self.done: dict[tuple[str, str], Status] = {}
        self.changed_nodes: set[tuple[str, str]] = set()
        self.units: dict[tuple[str, str], _Unit] = {}
        self.jobs: dict[str, tuple[_Unit, str]] = {}  # job id -> (its unit, the agent it runs on)
        self.timers: list[tuple[float, int, _Unit]] = []
        self.once_results: dict[str, dict[str, Any]] = {}  # run_once task id -> its result
        self.async_jobs: dict[str, dict[str, Any] | None] = {}  # async jid -> registered result once in
        self.background: dict[str, tuple[str, str, Any]] = {}  # job id -> (jid, agent, result converter)
        self._parsed: dict[str, Any] = {}  # ANSIBLE job arguments -> their parse (the payload is costly)
        self.run_name = self.options.name or self._default_name()

    # -- set-up -----------------------------------------------------------------------------

    def _default_name(self) -> str:
        key = json.dumps([sorted(self.services), sorted((h.name, h.agent, sorted(h.services))
                                                         for h in self.inventory.hosts.values())])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def _check_services(self) -> None:
        for host in self.inventory.hosts.values():
            for name in host.services:
                if name not in self.services:
                    where = self.inventory.path or "the command line"
                    raise ValueError(f"{where}: host {host.name} runs service {name!r}, which is not loaded")

    def required_services(self, service: Service) -> list[Service]:
        """Services `service` requires, deepest first (their variables sit below its own)."""
        found: list[Service] = []

        def visit(current: Service) -> None:
            for name in current.requires:
                if name not in self.services:
                    raise ValueError(f"{current.path}: requires service {name!r}, which is not loaded")
                required = self.services[name]
                if required not in found:
                    visit(required)
                    found.append(required)

        visit(service)
        return found

    def magic(self, host: HostState, service: Service) -> dict[str, Any]:
        groups = self.inventory.groups()
        play_hosts = [h for h, state in self.hosts.items() if service.name in state.host.services]
        return {
            "inventory_hostname": host.name,
            "inventory_hostname_short": host.name.split(".")[0],
            "group_names": sorted(host.host.groups),
            "groups": groups,
            "hostvars": _HostVars(self, service),
            "ansible_check_mode": self.options.check,
            "ansible_play_hosts": [h for h in play_hosts if not self.hosts[h].failed],
            "ansible_play_hosts_all": play_hosts,
            "ansible_play_batch": [h for h in play_hosts if not self.hosts[h].failed],
            "role_name": service.name,
            "role_path": str(service.base_dir),
            "playbook_dir": str(service.base_dir),
            "ansible_async_dir": "~/.ansible_async",
        }

    def agent_for(self, host: str) -> str:
        if host in self.hosts:
            return self.hosts[host].host.agent
        if host in LOCALHOST_NAMES and self.inventory.localhost_agent:
            return self.inventory.localhost_agent
        hint = " (set localhost_agent in the inventory)" if host in LOCALHOST_NAMES else ""
        raise steps.StepError(f"delegate_to: {host!r} is not a host of the inventory{hint}")

    def nodes_for(self, host: HostState) -> list[str]:
        return [n for n in self.order if self.graph.nodes[n]["service"] in host.host.services]

    # -- running ----------------------------------------------------------------------------

    def run(self) -> RunReport:
        if self.options.restart:
            self.store.delete_checkpoints(self._prefix())
        self._resume()
        self._gather_facts()
        while True:
            started = self._start_ready()
            if not self.units and not started:
                break
            if self.units:
                self._wait()
        report = RunReport(self.records, self.recap, {h: s.failed for h, s in self.hosts.items() if s.failed})
        if report.ok:
            self.store.delete_checkpoints(self._prefix())
        self.store.flush()
        return report

    def _prefix(self) -> str:
        return f"graph/{self.run_name}/"

    def _resume(self) -> None:
        for host in self.hosts.values():
            for node in self.nodes_for(host):
                saved = self.store.get_checkpoint(f"{self._prefix()}{host.name}/{node}")
                if not saved:
                    continue
                host.apply(saved.get("effects", {}))
                status = Status(saved["status"])
                self.done[(host.name, node)] = status
                host.completed.append(node)
                if saved.get("changed"):
                    self.changed_nodes.add((host.name, node))
                self.recap[host.name].resumed += 1
                self._say(f"resumed  [{host.name}] {node}: {status.value} in an earlier run")

    def _gather_facts(self) -> None:
        wanted = {h: s for h, s in self.hosts.items()
                  if any(self.services[name].gather_facts for name in s.host.services)}
        if not wanted:
            return
        subsets = {self.services[n].gather_facts for s in wanted.values() for n in s.host.services}
        subset = ["all"] if True in subsets or "all" in subsets else ["min"]
        parsed = components.get("ANSIBLE").parse({"module": "ansible.builtin.setup", "args": {"gather_subset": subset}})
        specs = {name: JobSpec(verb="ANSIBLE", args=parsed.args, targets=[state.host.agent], label=f"{name} {FACTS_NODE}")
                 for name, state in wanted.items()}
        self.client.upload(parsed.uploads)
        outcomes = self.client.run(list(specs.values()))
        by_job = {o.job: o.result for o in outcomes}
        for name, spec in specs.items():
            result = by_job.get(spec.id)
            if result is None or not result.ok:
                self._fail_host(self.hosts[name], f"gathering facts failed: {result.error if result else 'no result'}")
            else:
                self.hosts[name].facts = dict(result.data.get("ansible_facts", {}))
                self._say(f"ok       [{name}] {FACTS_NODE}")

    def _start_ready(self) -> bool:
        started = False
        for host in self.hosts.values():
            if host.failed:
                self._maybe_roll_back(host)
                continue
            for node in self.nodes_for(host):
                key = (host.name, node)
                if key in self.done or key in self.units or not self._ready(host, node):
                    continue
                task: Task = self.graph.nodes[node]["task"]
                if task.keywords.get("run_once") and self._once_running(node):
                    continue
                if task.on_change and not self._upstream_changed(host, node):
                    self._skip(host, task, "nothing it depends on changed")
                    started = True
                    continue
                self.units[key] = _Unit(host, node, unit.run(host, task), time.monotonic())
                self._advance(self.units[key], None)
                started = True
            self._maybe_handlers(host)
        return started

    def _ready(self, host: HostState, node: str) -> bool:
        for before in self.graph.predecessors(node):
            service = self.graph.nodes[before]["service"]
            if service in host.host.services:
                if (host.name, before) not in self.done:
                    return False
            else:  # another service's task: wait until every host running it has done it
                for other in self.hosts.values():
                    if service in other.host.services and not other.failed and (other.name, before) not in self.done:
                        return False
        return True

    def _once_running(self, node: str) -> bool:
        """A run_once task waits while another host runs it, then takes that host's result."""
        return node not in self.once_results and any(key[1] == node for key in self.units)

    def _upstream_changed(self, host: HostState, node: str) -> bool:
        return any((host.name, before) in self.changed_nodes for before in nx.ancestors(self.graph, node))

    def _skip(self, host: HostState, task: Task, reason: str) -> None:
        record = TaskRecord(task=task.id, name=task.title, source=task.source, host=host.name,
                            status=Status.SKIPPED, msg=reason)
        self.finished_task(host, record)
        self._finish_node(host, task.id, Status.SKIPPED, changed=False)

    def _advance(self, current: _Unit, answer: Any) -> None:
        """Run the unit's generator to its next request (or its end)."""
        host = current.host
        host.effects = current.effects
        try:
            request = current.steps.send(answer)
        except StopIteration as stop:
            self._end_unit(current, stop.value)
            return
        except HostFailed as failure:
            self._end_unit(current, failure.record, failed=True)
            return
        finally:
            current.effects = host.effects
        if isinstance(request, Sleep):
            heapq.heappush(self.timers, (time.monotonic() + request.seconds, id(current), current))
            return
        self._submit(current, request)

    def parse_job(self, verb: str, args: Any, base_dir: Path) -> Any:
        """A job's controller-side parse; ANSIBLE's (building the module payload) once per distinct arguments."""
        if verb != "ANSIBLE":
            return components.get(verb).parse(args if args is not None else "", base_dir=base_dir)
        key = json.dumps([args, str(base_dir)], sort_keys=True, default=str)
        if key not in self._parsed:
            self._parsed[key] = components.get(verb).parse(args, base_dir=base_dir)
        return self._parsed[key]

    def start_background(self, host: HostState, jid: str, submit: Submit, registered: Any) -> None:
        """An async task with poll 0: submitted now, its result kept for async_status."""
        self.async_jobs[jid] = None
        try:
            self.client.upload(submit.uploads)
            self.client.submit(submit.specs)
        except (OSError, ValueError, RuntimeError) as exc:
            self.async_jobs[jid] = {"failed": True, "finished": 1, "msg": f"cannot submit: {exc}"}
            return
        spec = submit.specs[0]
        self.background[spec.id] = (jid, spec.targets[0], registered)

    def _submit(self, current: _Unit, request: Submit) -> None:
        try:
            self.client.upload(request.uploads)
            self.client.submit(request.specs)
        except (OSError, ValueError, RuntimeError) as exc:
            failed = [JobResult.failure(f"cannot submit: {exc}") for _ in request.specs]
            self._advance(current, failed)
            return
        current.answers = [None] * len(request.specs)
        current.waiting = {spec.id: index for index, spec in enumerate(request.specs)}
        for spec in request.specs:
            self.jobs[spec.id] = (current, spec.targets[0])

    def _wait(self) -> None:
        timeout = 1.0
        if self.timers:
            timeout = max(0.0, min(timeout, self.timers[0][0] - time.monotonic()))
        expected = {job: {agent} for job, (_, agent) in self.jobs.items()}
        expected.update({job: {agent} for job, (_, agent, _) in self.background.items()})
        if expected:
            try:
                for outcome in self.client.results(expected, timeout=timeout):
                    self._answer(outcome.job, outcome.result)
                    break
            except TimeoutError:
                pass
        else:
            time.sleep(timeout)
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, current = heapq.heappop(self.timers)
            self._advance(current, None)

    def _answer(self, job: str, result: JobResult) -> None:
        if job in self.background:
            jid, _, registered = self.background.pop(job)
            self.async_jobs[jid] = registered(result)
            return
        entry = self.jobs.pop(job, None)
        if entry is None:
            return
        current = entry[0]
        current.answers[current.waiting.pop(job)] = result
        if not current.waiting:
            self._advance(current, list(current.answers))

    def _end_unit(self, current: _Unit, record: Any, failed: bool = False) -> None:
        host, node = current.host, current.node
        del self.units[(host.name, node)]
        effects = current.effects
        if node.startswith(ROLLBACK_NODE):
            return
        if node.startswith(HANDLERS_NODE):
            if failed:
                self._fail_host(host, record.msg)
            return
        status = record.status if isinstance(record, TaskRecord) else Status.OK
        changed = bool(effects.pop("changed", False))
        if failed:
            self._fail_host(host, f"{record.task}: {record.msg}", self.graph.nodes[node]["service"])
            return
        self._finish_node(host, node, status, changed, effects)

    def _finish_node(self, host: HostState, node: str, status: Status, changed: bool,
                     effects: dict[str, Any] | None = None) -> None:
        self.done[(host.name, node)] = status
        host.completed.append(node)
        if changed:
            self.changed_nodes.add((host.name, node))
        self.store.put_checkpoint(f"{self._prefix()}{host.name}/{node}",
                                  {"status": status.value, "changed": changed, "effects": _plain(effects or {})})

    def _fail_host(self, host: HostState, reason: str, service: str = "") -> None:
        if not host.failed:
            host.failed = reason or "failed"
            host.failed_service = service

    def _maybe_roll_back(self, host: HostState) -> None:
        """--rollback-on-failure: once nothing of a failed host is in flight, undo its failed service."""
        if (not self.options.rollback_on_failure or host.rolled_back or not host.failed_service
                or any(key[0] == host.name for key in self.units)):
            return
        host.rolled_back = True
        key = (host.name, f"{ROLLBACK_NODE}{host.failed_service}")
        self.units[key] = _Unit(host, key[1], self._roll_back(host, host.failed_service), time.monotonic())
        self._advance(self.units[key], None)

    def _roll_back(self, host: HostState, service: str) -> unit.Steps:
        """The rollback jobs of the service's finished tasks, last finished first.

        Every rollback runs even when one fails (each is reported); afterwards the service's
        checkpoints on this host are dropped, since what they recorded was undone.
        """
        for node in reversed(host.completed):
            task: Task = self.graph.nodes[node]["task"]
            if task.service != service or not task.rollback:
                continue
            undo = Task(service=task.service, local_id=f"{task.local_id}.rollback", where=task.where,
                        name=f"rollback: {task.title}", source=task.source, jobs=task.rollback,
                        keywords={k: v for k, v in task.keywords.items() if k in ("become", "become_user", "environment",
                                                                                   "vars", "delegate_to")})
            try:
                yield from unit.run(host, undo, Scope())
            except HostFailed:
                pass  # reported; the other rollbacks still run
        for node in host.completed:
            if self.graph.nodes[node]["service"] == service:
                self.store.delete_checkpoints(f"{self._prefix()}{host.name}/{node}")

    def _maybe_handlers(self, host: HostState) -> None:
        """After the last task of a service on a host, run the handlers it notified."""
        if host.failed:
            return
        for name in host.host.services:
            key = (host.name, f"{HANDLERS_NODE}{name}")
            if key in self.done or key in self.units:
                continue
            nodes = [n for n in self.nodes_for(host) if self.graph.nodes[n]["service"] == name]
            if all((host.name, n) in self.done for n in nodes):
                service = self.services[name]
                self.units[key] = _Unit(host, key[1], self.handlers(host, service), time.monotonic())
                self.done[key] = Status.OK
                self._advance(self.units[key], None)

    def handlers(self, host: HostState, service: Service) -> unit.Steps:
        for handler in service.handlers:
            names = {handler.name, handler.local_id, *handler.listen}
            if not names & set(host.notified):
                continue
            host.notified = [n for n in host.notified if n not in names]
            yield from unit.run(host, handler, Scope())

    def finished_task(self, host: HostState, record: TaskRecord) -> None:
        self.records.append(record)
        if record.status is Status.CHANGED:
            host.effects["changed"] = True
        self.recap[host.name].count(record)
        flag = " (ignored)" if record.ignored else ""
        message = f": {record.msg}" if record.status is Status.FAILED and record.msg else ""
        self._say(f"{record.status.value:<8} [{host.name}] {record.task}  {record.name!r}{flag}{message}")

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def tags_select(tags: set[str], only: set[str], skip: set[str]) -> bool:
    """Ansible's tag rules: `always` runs unless skipped by name, `never` only when asked for."""
    run = ("always" in tags or ("all" in only and "never" not in tags) or bool(tags & only)
           or ("tagged" in only and bool(tags) and "never" not in tags) or ("untagged" in only and not tags))
    if run and skip:
        if "all" in skip:
            run = "always" in tags and "always" not in skip
        elif tags & skip or ("tagged" in skip and tags):
            run = False
    return run


class _HostVars(dict):  # type: ignore[type-arg]
    """Ansible's `hostvars`: each host's variables, built when a template asks for them."""

    def __init__(self, runner: Runner, service: Service) -> None:
        super().__init__()
        self._runner = runner
        self._service = service

    def __missing__(self, name: str) -> dict[str, Any]:
        state = self._runner.hosts.get(name)
        if state is None:
            raise KeyError(name)
        probe = self._service.tasks[0] if self._service.tasks else None
        if probe is None:
            return {}
        variables = {k: v for k, v in state.variables(probe, {}).items() if k != "hostvars"}
        self[name] = variables
        return variables

    def __contains__(self, name: object) -> bool:
        return name in self._runner.hosts

    def keys(self):  # type: ignore[no-untyped-def, override]
        return self._runner.hosts.keys()


def _plain(value: Any) -> Any:
    """Checkpoint values as plain JSON-able data (templated results can carry Ansible's tagged types)."""
    return json.loads(json.dumps(value, default=str))

