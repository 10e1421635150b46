"""One task on one host, written as a generator that the runner drives.

The generator yields `Submit` (agent jobs to run; the runner sends back their results) or
`Sleep` (retry delays), and returns a `TaskRecord`.  This keeps Ansible's per-task rules in one
readable place — `when` (per loop item when there is a loop), loops, `until`/`retries`,
`changed_when`/`failed_when`, `register`, `ignore_errors`, `notify`, and block/rescue/always —
while the runner stays a plain scheduler that can interleave many hosts and branches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Protocol

from accelerator.graph import playbook, results, steps
from accelerator.graph.service import Service, Task
from accelerator.graph.templating import Evaluator, TemplateError, trusted
from accelerator.model import JobResult, JobSpec


@dataclass(slots=True)
class Submit:
    """Run these agent jobs; the runner answers with their results, in the same order."""

    specs: list[JobSpec]
    uploads: dict[str, Path]


@dataclass(slots=True)
class Sleep:
    seconds: float


Request = Submit | Sleep
DEFAULT_POLL = 15  # Ansible's DEFAULT_POLL_INTERVAL
NO_LOG_MESSAGE = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"
Steps = Generator[Request, Any, Any]


class Status(str, enum.Enum):
    """How a task ended on a host, as Ansible's recap counts it."""

    OK = "ok"
    CHANGED = "changed"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(slots=True)
class TaskRecord:
    task: str
    name: str
    source: str
    host: str
    status: Status
    ignored: bool = False
    rescued: bool = False
    msg: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"task": self.task, "name": self.name, "source": self.source, "host": self.host,
                "status": self.status.value, "ignored": self.ignored, "rescued": self.rescued, "msg": self.msg}


@dataclass(slots=True)
class Scope:
    """What a block hands down to the tasks inside it, as Ansible's keyword inheritance does."""

    when: list[Any] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    keywords: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def inner(self, block: Task, extra_vars: dict[str, Any] | None = None) -> Scope:
        keywords = {**self.keywords, **{k: v for k, v in block.keywords.items()
                                        if k not in ("when", "vars", "loop", "loop_with", "register", "loop_control",
                                                     "tags")}}
        return Scope(when=self.when + _as_list(block.keywords.get("when")),
                     vars={**self.vars, **trusted(block.keywords.get("vars", {})), **(extra_vars or {})},
                     keywords=keywords, tags=self.tags + _as_list(block.keywords.get("tags")))


class HostEnv(Protocol):
    """What a task needs from the runner for the host it runs on."""

    name: str

    def agent_for(self, host: str) -> str: ...

    def variables(self, task: Task, extra: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
        """The host's variables for `task`; `current` (a result under its register name) wins over earlier ones."""

    def service(self, name: str) -> Service: ...

    def set_facts(self, values: dict[str, Any]) -> None: ...

    def include_vars(self, values: dict[str, Any]) -> None: ...

    def register(self, name: str, value: Any) -> None: ...

    def notify(self, names: list[str]) -> None: ...

    def flush_handlers(self) -> Steps: ...

    def build_job(self, task: Task, verb: str, args: Any, base_dir: Path, env: dict[str, str],
                  delegate: str | None, run_as: str) -> Submit: ...

    def record(self, record: TaskRecord) -> None: ...

    def inventory_vars(self) -> dict[str, Any]:
        """The host's inventory variables (what a generated Ansible inventory gives it)."""

    def new_async_id(self) -> str:
        """A job id for an async task, as ansible_job_id."""

    def start_background(self, jid: str, submit: Submit, registered: Any) -> None:
        """Submit without waiting (async with poll 0); `registered` turns the result into what async_status shows."""

    def async_result(self, jid: str) -> tuple[bool, dict[str, Any] | None]:
        """(whether the job is known, its registered result once finished)."""

    def selected(self, tags: list[str], is_block: bool) -> bool:
        """Whether --tags / --skip-tags let a task with these (inherited) tags run."""

    def check_mode(self) -> bool:
        """Whether the run is in check mode (--check)."""

    def run_once(self, task: Task, result: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """For run_once tasks: the result another host already got (or store this host's)."""

    def add_facts(self, facts: dict[str, Any]) -> None:
        """Facts a module returned (ansible_facts), as Ansible adds them to the host."""


class HostFailed(Exception):
    """A task failed (not ignored) on this host: the host stops, as in Ansible."""

    def __init__(self, record: TaskRecord) -> None:
        super().__init__(record.msg)
        self.record = record


def run(env: HostEnv, task: Task, scope: Scope | None = None) -> Steps:
    """Run `task` (or its block) on `env`'s host; raise HostFailed when the host must stop."""
    scope = scope or Scope()
    if not env.selected(scope.tags + _as_list(task.keywords.get("tags")), bool(task.block)):
        return None
    if task.dynamic:
        return (yield from _run_include(env, task, scope))
    if task.block:
        return (yield from _run_block(env, task, scope))
    record = yield from _run_task(env, task, scope)
    if record is None:
        return None
    env.record(record)
    if record.status is Status.FAILED and not record.ignored:
        raise HostFailed(record)
    return record


def _run_include(env: HostEnv, include: Task, scope: Scope) -> Steps:
    """include_tasks / include_role: reported once (ok, or skipped), then its tasks run per item.

    Unlike a block (import_tasks), the include's `when` and `loop` are evaluated here only; the
    included tasks inherit the include's vars and its `apply` keywords, not its conditions.
    """
    record = TaskRecord(task=include.id, name=include.title, source=include.source, host=env.name, status=Status.OK)
    own_vars = {**scope.vars, **trusted(include.keywords.get("vars", {}))}
    evaluator = Evaluator(env.variables(include, own_vars))
    when = scope.when + _as_list(include.keywords.get("when"))
    runs: list[dict[str, Any]] = []
    try:
        if "loop" in include.keywords:
            loop_var = (include.keywords.get("loop_control") or {}).get("loop_var", "item")
            for item in _loop_items(include.keywords, evaluator, _search_dirs(env, include)):
                item_vars = {**own_vars, loop_var: item, "ansible_loop_var": loop_var}
                if not when or Evaluator(env.variables(include, item_vars)).condition(trusted(when)):
                    runs.append(item_vars)
        elif not when or evaluator.condition(trusted(when)):
            runs.append(own_vars)
        tasks = [_included_tasks(env, include, Evaluator(env.variables(include, run_vars))) for run_vars in runs]
    except (TemplateError, steps.StepError) as exc:
        record.status, record.msg, record.result = Status.FAILED, str(exc), {"failed": True, "msg": str(exc)}
        env.record(record)
        raise HostFailed(record) from None
    record.status = Status.OK if runs else Status.SKIPPED
    env.record(record)
    apply = include.apply
    for run_vars, children in zip(runs, tasks):
        inner = Scope(when=list(scope.when), vars={**scope.vars, **run_vars},
                      keywords={**scope.keywords, **{k: v for k, v in apply.items() if k not in ("when", "vars", "tags")}},
                      tags=scope.tags + _as_list(apply.get("tags")))
        for child in children:
            yield from run(env, child, inner)
    return record


def _included_tasks(env: HostEnv, include: Task, evaluator: Evaluator) -> list[Task]:
    if not include.include:
        return include.block
    name = str(evaluator.template(trusted(include.include)))
    files = env.service(include.service).task_files
    if name not in files:
        raise steps.StepError(f"Could not find or access '{name}' (the service has task files: "
                              f"{', '.join(sorted(files)) or 'none'})")
    return files[name]


def _run_block(env: HostEnv, block: Task, scope: Scope, extra_vars: dict[str, Any] | None = None) -> Steps:
    inner = scope.inner(block, extra_vars)
    failure: HostFailed | None = None
    try:
        for child in block.block:
            yield from run(env, child, inner)
    except HostFailed as failed:
        failure = failed
    if failure is not None and block.rescue:
        failed_vars = {"ansible_failed_task": {"name": failure.record.name, "id": failure.record.task},
                       "ansible_failed_result": failure.record.result}
        rescue_scope = Scope(when=inner.when, vars={**inner.vars, **failed_vars}, keywords=inner.keywords,
                             tags=inner.tags)
        failure.record.rescued = True
        try:
            for child in block.rescue:
                yield from run(env, child, rescue_scope)
            failure = None
        except HostFailed as failed:
            failure = failed
    for child in block.always:
        yield from run(env, child, inner)
    if failure is not None:
        raise failure


def _run_task(env: HostEnv, task: Task, scope: Scope) -> Steps:
    keywords = {**scope.keywords, **task.keywords}
    base_vars = {**scope.vars, **trusted(task.keywords.get("vars", {}))}
    record = TaskRecord(task=task.id, name=task.title, source=task.source, host=env.name, status=Status.OK)
    evaluator = Evaluator(env.variables(task, base_vars))
    when = scope.when + _as_list(task.keywords.get("when"))
    once = _flag(evaluator, keywords.get("run_once"))
    if once:
        earlier = env.run_once(task)
        if earlier is not None:  # another host ran it: this host only gets the result, as in Ansible
            if keywords.get("register"):
                env.register(keywords["register"], earlier)
            return None
    if task.jobs and all(next(iter(job)) == "META" for job in task.jobs):
        # meta tasks are not reported by Ansible (no runner result); they only act
        for job in task.jobs:
            yield from _meta(env, next(iter(job.values())))
        return None
    try:
        if "check_mode" in keywords:
            keywords["_check"] = _flag(evaluator, keywords["check_mode"])
        else:
            keywords["_check"] = env.check_mode()
        if "loop" in keywords:
            result = yield from _run_loop(env, task, keywords, when, base_vars, evaluator)
        elif when and not evaluator.condition(trusted(when)):
            result = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}
        else:
            result = yield from _attempts(env, task, keywords, evaluator, base_vars)
    except (TemplateError, steps.StepError) as exc:
        result = {"failed": True, "changed": False, "msg": str(exc)}
    if once:
        env.run_once(task, result)
    if keywords.get("register"):
        env.register(keywords["register"], result)
    record.result = result
    if result.get("failed"):
        record.status = Status.FAILED
        record.msg = str(result.get("msg", ""))
        failed_items = [r for r in result.get("results", []) if isinstance(r, dict) and r.get("failed")]
        if failed_items:  # say why, as Ansible prints each failed item
            record.msg += f" (first: {failed_items[0].get('msg', '')})"
        record.ignored = _flag(evaluator, keywords.get("ignore_errors"))
    elif result.get("skipped"):
        record.status = Status.SKIPPED
    else:
        record.status = Status.CHANGED if result.get("changed") else Status.OK
    if _flag(evaluator, keywords.get("no_log")):
        record.msg = NO_LOG_MESSAGE if record.msg else ""
    if record.status is Status.CHANGED and task.notify:
        env.notify(task.notify)
    return record


def _run_loop(env: HostEnv, task: Task, keywords: dict[str, Any], when: list[Any],
              base_vars: dict[str, Any], evaluator: Evaluator) -> Steps:
    items = _loop_items(keywords, evaluator, _search_dirs(env, task))
    control = keywords.get("loop_control") or {}
    loop_var = control.get("loop_var", "item")
    index_var = control.get("index_var")
    item_results = []
    for index, item in enumerate(items):
        item_vars = {**base_vars, loop_var: item, "ansible_loop_var": loop_var}
        if index_var:
            item_vars[index_var] = index
            item_vars["ansible_index_var"] = index_var
        if control.get("extended"):
            item_vars["ansible_loop"] = _extended(items, index)
        item_evaluator = Evaluator(env.variables(task, item_vars))
        if when and not item_evaluator.condition(trusted(when)):
            outcome: dict[str, Any] = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}
        else:
            try:
                outcome = yield from _attempts(env, task, keywords, item_evaluator, item_vars)
            except (TemplateError, steps.StepError) as exc:
                outcome = {"failed": True, "changed": False, "msg": str(exc)}
        outcome.update({loop_var: item, "ansible_loop_var": loop_var})
        if index_var:
            outcome.update({index_var: index, "ansible_index_var": index_var})
        item_results.append(outcome)
        if control.get("pause"):
            yield Sleep(float(control["pause"]))
    result: dict[str, Any] = {"results": item_results, "changed": any(r.get("changed") for r in item_results),
                              "msg": "All items completed"}
    if not item_results:
        result.update(skipped=True, skipped_reason="No items in the list")
    elif all(r.get("skipped") for r in item_results):
        result.update(skipped=True, msg="All items skipped")
    if any(r.get("failed") for r in item_results):
        result.update(failed=True, msg="One or more items failed")
    return result


def _search_dirs(env: HostEnv, task: Task) -> list[Path]:
    """Where with_first_found looks, as Ansible gives the lookup the subdirectory of the task's action."""
    service = env.service(task.service)
    verb = next(iter(task.jobs[0])) if task.jobs else ""
    subdir = {"TEMPLATE": service.templates_dir, "VARS": service.vars_dir}.get(verb, service.files_dir)
    return [subdir, service.base_dir]


def _loop_items(keywords: dict[str, Any], evaluator: Evaluator, search: list[Path]) -> list[Any]:
    """`loop` templated to a list; `loop_with` runs the with_* lookup over the templated terms."""
    terms = evaluator.template(trusted(keywords["loop"]))
    lookup = keywords.get("loop_with")
    if lookup == "first_found":
        candidates, skip = steps.first_found(terms)
        for candidate in candidates:
            for path in [Path(candidate)] if Path(candidate).is_absolute() else [d / candidate for d in search]:
                if path.is_file():
                    return [str(path)]
        if skip:
            return []
        raise TemplateError("The lookup plugin 'first_found' failed: No file was found when using first_found.")
    if lookup:
        terms = terms if isinstance(terms, list) else [terms]
        items = Evaluator({"__loop_terms": terms}).template(trusted("{{ query('" + lookup + "', *__loop_terms) }}"))
    else:
        items = terms
    if not isinstance(items, list):
        raise TemplateError(f"The `loop` value must resolve to a 'list', not {type(items).__name__!r}.")
    return items


def _extended(items: list[Any], index: int) -> dict[str, Any]:
    length = len(items)
    return {"allitems": items, "index": index + 1, "index0": index, "revindex": length - index,
            "revindex0": length - index - 1, "first": index == 0, "last": index == length - 1, "length": length,
            "previtem": items[index - 1] if index else None, "nextitem": items[index + 1] if index + 1 < length else None}


def _attempts(env: HostEnv, task: Task, keywords: dict[str, Any], evaluator: Evaluator,
              extra: dict[str, Any]) -> Steps:
    """Run the jobs once, or until `until` holds (Ansible's retries and delay rules)."""
    until = keywords.get("until")
    if until is None:
        result = yield from _run_jobs(env, task, keywords, evaluator)
        return _judge(env, task, keywords, extra, result)
    retries = keywords.get("retries")
    retries = 3 if retries is None else int(evaluator.template(trusted(retries)))
    attempts = 1 if retries <= 0 else retries + 1 if keywords.get("retries") is not None else retries
    delay = float(evaluator.template(trusted(keywords.get("delay", 5))))
    for attempt in range(1, attempts + 1):
        result = yield from _run_jobs(env, task, keywords, evaluator)
        result = _judge(env, task, keywords, extra, result)
        result["attempts"] = attempt
        if _bound(env, task, keywords, extra, result).condition(trusted(_as_list(until))):
            return result
        if attempt < attempts:
            yield Sleep(delay)
    result["failed"] = True
    return result


def _judge(env: HostEnv, task: Task, keywords: dict[str, Any], extra: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Apply changed_when and failed_when, with the registered name bound to this result."""
    if "changed_when" in keywords or "failed_when" in keywords:
        evaluator = _bound(env, task, keywords, extra, result)
        if "changed_when" in keywords:
            result["changed"] = evaluator.condition(trusted(keywords["changed_when"]))
        if "failed_when" in keywords:
            failed = evaluator.condition(trusted(keywords["failed_when"]))
            result["failed_when_result"] = failed
            result["failed"] = failed
            if not failed and result.get("msg") == "non-zero return code":
                del result["msg"]
    return result


def _bound(env: HostEnv, task: Task, keywords: dict[str, Any], extra: dict[str, Any], result: dict[str, Any]) -> Evaluator:
    name = keywords.get("register")
    return Evaluator(env.variables(task, extra, {name: result} if name else None))


def _run_jobs(env: HostEnv, task: Task, keywords: dict[str, Any], evaluator: Evaluator) -> Steps:
    """Each job in turn; the task's result is the last job's, changed if any job changed."""
    service = env.service(task.service)
    environment = evaluator.template(trusted(keywords.get("environment") or {}))
    delegate = evaluator.template(trusted(keywords["delegate_to"])) if keywords.get("delegate_to") else None
    run_as = str(evaluator.template(trusted(keywords.get("become_user") or "root"))) \
        if _flag(evaluator, keywords.get("become")) else ""
    changed = False
    result: dict[str, Any] = {"changed": False}
    for job in task.jobs:
        verb, spec = next(iter(job.items()))
        if verb in steps.STEPS:
            result = steps.STEPS[verb](trusted(spec), evaluator, env, service.vars_dir)
        elif verb == "META":
            result = yield from _meta(env, spec)
        elif verb == "PLAYBOOK":
            result = yield from playbook.run(evaluator.template(trusted(spec)), env.name, env.inventory_vars(),
                                             evaluator.variables(), service.base_dir, Sleep)
        elif verb == "TEMPLATE":
            result = yield from _template(env, task, evaluator, service, trusted(spec), environment, delegate,
                                          keywords["_check"], run_as)
        elif verb == "ASYNC_STATUS":
            result = _async_status(env, evaluator.template(trusted(spec)))
        else:
            args = _with_check_mode(verb, evaluator.template(trusted(spec)), keywords["_check"])
            if args is None:  # a command in check mode without creates/removes: Ansible skips it
                result = {"changed": False, "skipped": True, "rc": 0,
                          "msg": "Command would have run if not in check mode"}
                continue
            base = service.files_dir if verb in ("WRITE", "COPY") else service.base_dir
            seconds = int(evaluator.template(trusted(keywords.get("async", 0))) or 0)
            if seconds > 0:
                result = yield from _run_async(env, task, keywords, evaluator, verb, args, seconds,
                                               (base, environment, delegate, run_as))
                changed = changed or bool(result.get("changed"))
                continue
            submit = env.build_job(task, verb, args, base, environment, delegate, run_as)
            (job_result,) = yield submit
            result = _registered(verb, args, job_result)
            if verb == "ANSIBLE" and isinstance(result.get("ansible_facts"), dict):
                env.add_facts(result["ansible_facts"])
        changed = changed or bool(result.get("changed"))
        if result.get("failed"):
            break
    result["changed"] = changed
    return result


def _run_async(env: HostEnv, task: Task, keywords: dict[str, Any], evaluator: Evaluator, verb: str, args: Any,
               seconds: int, where: tuple[Path, dict[str, str], str | None, str]) -> Steps:
    """async/poll: the command gets `seconds` to finish; poll 0 leaves it running for async_status."""
    if verb != "RUN":
        raise steps.StepError(f"async: only commands run asynchronously here, not {verb}")
    poll = int(evaluator.template(trusted(keywords.get("poll", DEFAULT_POLL))))
    jid = env.new_async_id()
    results_file = f"{evaluator.template(trusted('{{ ansible_async_dir }}'))}/{jid}"
    spec = {**(args if isinstance(args, dict) else {"command": args}), "timeout": seconds, "results_file": results_file}
    base, environment, delegate, run_as = where
    submit = env.build_job(task, verb, spec, base, environment, delegate, run_as)
    status = {"ansible_job_id": jid, "started": 1, "results_file": results_file}
    if poll <= 0:
        env.start_background(jid, submit, lambda job_result: {**_registered(verb, spec, job_result), **status,
                                                               "finished": 1})
        return {**status, "changed": True, "finished": 0}
    (job_result,) = yield submit
    return {**_registered(verb, spec, job_result), **status, "finished": 1}


def _async_status(env: HostEnv, spec: Any) -> dict[str, Any]:
    """async_status: the background job's result once it is in (finished 1), else finished 0."""
    if not isinstance(spec, dict) or "jid" not in spec:
        raise steps.StepError("ASYNC_STATUS needs 'jid'")
    jid = str(spec["jid"])
    known, result = env.async_result(jid)
    if not known:
        raise steps.StepError(f"could not find job {jid!r}")
    base = {"ansible_job_id": jid, "started": False, "finished": False, "changed": False,
            "stdout": "", "stderr": "", "stdout_lines": [], "stderr_lines": []}
    if spec.get("mode", "status") == "cleanup":
        return {**base, "erased": (result or {}).get("results_file", "")}
    if result is None:
        return {**base, "started": True}
    return {**base, **result, "started": True, "finished": True}  # booleans, as ansible-core 2.19 reports them


def _with_check_mode(verb: str, args: Any, check: bool) -> Any:
    """The job's arguments in check mode (or None when, as in Ansible, the job is skipped)."""
    if not check:
        return args
    if verb in ("FILE", "WRITE"):
        return {**args, "check": True}
    if verb == "ANSIBLE":
        return {**args, "args": {**(args.get("args") or {}), "_ansible_check_mode": True}}
    if verb == "RUN":
        spec = args if isinstance(args, dict) else {"command": args}
        if not spec.get("creates") and not spec.get("removes"):
            return None
        return {**spec, "check": True}
    return args


def _registered(verb: str, args: Any, job_result: JobResult) -> dict[str, Any]:
    if verb == "RUN":
        command = args.get("command") if isinstance(args, dict) else args
        cmd = command.split() if isinstance(args, dict) and args.get("argv") and isinstance(command, str) else command
        return results.command_result(job_result, cmd)
    return results.module_result(job_result)


def _meta(env: HostEnv, spec: Any) -> Steps:
    if spec != "flush_handlers":
        raise steps.StepError(f"META {spec!r} is not supported; only flush_handlers")
    yield from env.flush_handlers()
    return {"changed": False, "skipped": False}


def _template(env: HostEnv, task: Task, evaluator: Evaluator, service: Service, spec: Any,
              environment: dict[str, str], delegate: str | None, keywords_check: bool, run_as: str) -> Steps:
    """The template action: render on the controller, then write the text with WRITE's copy rules."""
    args = evaluator.template(spec)
    if not isinstance(args, dict) or "src" not in args or "dest" not in args:
        raise steps.StepError("TEMPLATE needs 'src' and 'dest'")
    source = service.templates_dir / str(args["src"])
    text = evaluator.render_file(str(source), str(args["src"]), str(args["dest"]),
                                 [str(service.templates_dir.parent), str(service.templates_dir)])
    write = {k: v for k, v in args.items() if k != "src"}
    write["content"] = text
    if keywords_check:
        write["check"] = True
    (job_result,) = yield env.build_job(task, "WRITE", write, service.files_dir, environment, delegate, run_as)
    result = results.module_result(job_result)
    return result


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _flag(evaluator: Evaluator, value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    rendered = evaluator.template(trusted(value))
    return rendered if isinstance(rendered, bool) else str(rendered).lower() in ("1", "true", "yes", "on")

