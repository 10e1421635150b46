"""What the accelerated strategies change in Ansible's own: workers are threads, connections are agents.

Stock strategies fork one WorkerProcess per host per task; each builds its own connection
and, over SSH, starts a new Python on the host for every module.  Here a task for a host
runs in a thread of the controller process (no fork, no pickled copy of the play per
task), and its connection is the host's Directord agent, started on first use through the
connection the play configured for that host.  Everything else (results, callbacks,
handlers, retries, loops, delegation, the recap) is the stock strategy's own code, which is
why results match stock Ansible's.

What a thread cannot do runs in a forked worker as before: a task with a `timeout:` keyword
(Ansible implements it with SIGALRM, which only the main thread of a process receives).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
import traceback
from typing import Any

from ansible.executor.task_executor import TaskExecutor
from ansible.plugins.loader import PluginLoader, get_plugin_loader_namespace
from ansible.template import Templar
from ansible.utils.display import Display

from ansible_collections.directord.accelerator.plugins.plugin_utils import engine  # noqa: F401  (sys.path)
from ansible_collections.directord.accelerator.plugins.plugin_utils import module_cache

display = Display()

AGENT_CONNECTION = "directord.accelerator.agent"
_plugin_import_lock = threading.RLock()

# ansible-core 2.21+ runs a task inside an ambient TaskContext instead of passing it to TaskExecutor.
_TASK_CONTEXT: Any = None
if "task" not in inspect.signature(TaskExecutor.__init__).parameters:
    from ansible._internal._task import TaskContext as _TASK_CONTEXT


def _serialise_plugin_imports() -> None:
    """Make the plugin loader's first import of a plugin safe for threads.

    PluginLoader puts a plugin's module into sys.modules *before* running it, and returns what
    it finds there; a second thread asking for the same plugin meanwhile gets a half-run module
    ("has no attribute 'ActionModule'").  Forked workers never meet this.  Holding one lock
    around the load (which is a dictionary lookup once the plugin is imported) closes the gap.
    """
    original = PluginLoader._load_module_source
    if getattr(original, "directord_serialised", False):
        return

    @functools.wraps(original)
    def load_module_source(self: PluginLoader, *args: Any, **kwargs: Any) -> Any:
        with _plugin_import_lock:
            return original(self, *args, **kwargs)

    load_module_source.directord_serialised = True  # type: ignore[attr-defined]
    PluginLoader._load_module_source = load_module_source  # type: ignore[method-assign]


_serialise_plugin_imports()

_ast_lock = threading.RLock()


def _serialise_ast_parse() -> None:
    """Parse Python source one thread at a time.

    Jinja compiles every string literal with ast.literal_eval; on Python 3.11 the parser's
    recursion counter is shared by the interpreter, and a thread switch in the middle of one
    parse (a finaliser running, say) fails another with "AST constructor recursion depth
    mismatch".  Forked workers never parse concurrently; threads must not either.
    """
    import ast

    original = ast.parse
    if getattr(original, "directord_serialised", False):
        return

    @functools.wraps(original)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with _ast_lock:
            return original(*args, **kwargs)

    parse.directord_serialised = True  # type: ignore[attr-defined]
    ast.parse = parse


_serialise_ast_parse()
module_cache.install()


@functools.cache
def _agent_class_by_loader(connection_loader: PluginLoader) -> Any:
    return connection_loader.get(AGENT_CONNECTION, class_only=True)


def _agent_class(shared_loader: Any) -> Any:
    """The agent connection class, looked up once (the loader's search costs per task and host)."""
    return _agent_class_by_loader(shared_loader.connection_loader)


class AgentTaskExecutor(TaskExecutor):
    """TaskExecutor whose connection is the host's agent, wrapped around the host's own connection.

    The host's connection is still created and configured exactly as stock Ansible would
    (options from inventory, become plugin, shell): the agent connection uses it to start the
    agent, to name the agent after the host's address and user, and for what the agent
    cannot do (become with a password prompt).  Connections the agent cannot replace (network
    devices, containers, ...) are left alone.
    """

    def _get_connection(self, cvars: dict[str, Any], templar: Templar, current_connection: str) -> Any:
        inner = super()._get_connection(cvars, templar, current_connection)
        if inner.transport == AGENT_CONNECTION or not _agent_class(self._shared_loader_obj).accelerates(inner):
            return inner
        agent = self._shared_loader_obj.connection_loader.get(
            AGENT_CONNECTION, self._play_context, task_uuid=self._task._uuid, ansible_playbook_pid=str(os.getpid())
        )
        agent.inner = inner
        self._set_become_plugin(cvars, templar, agent)
        self._play_context.set_attributes_from_plugin(agent)
        return agent

    def _set_connection_options(self, variables: dict[str, Any], templar: Templar) -> Any:
        agent = self._connection
        inner = getattr(agent, "inner", None)
        if inner is not None:
            self._connection = inner
            try:
                super()._set_connection_options(variables, templar)
            finally:
                self._connection = agent
        return super()._set_connection_options(variables, templar)


class ThreadWorker:
    """Runs one task on one host in a thread; looks like a WorkerProcess to the strategy and TQM."""

    def __init__(self, final_q: Any, task_vars: dict[str, Any], host: Any, task: Any, play_context: Any,
                 loader: Any, variable_manager: Any) -> None:
        self._final_q = final_q
        self._task_vars = task_vars
        self._host = host
        self._task = task
        self._play_context = play_context
        self._loader = loader
        self._variable_manager = variable_manager
        self.exitcode: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"task-{host.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        """Nothing to release: a thread has no process handle."""

    def terminate(self) -> None:
        """Threads cannot be killed; they are daemons and end with the process."""

    def _run(self) -> None:
        # TaskExecutor templates and post-validates the task and play context in place; a forked
        # worker does that to its own copy, so a thread must too.
        task = self._task.copy(exclude_parent=False, exclude_tasks=True)
        play_context = self._play_context.copy()
        try:
            if _TASK_CONTEXT is None:
                self._run_with_task_argument(task, play_context)
            else:
                self._run_in_task_context(task, play_context)
        except BaseException:
            # Without a result the strategy would wait for this task forever; a non-zero exit code
            # makes it stop with "A worker was found in a dead state", as for a dead forked worker.
            display.error(f"accelerated worker for {self._host.name} died:\n{traceback.format_exc()}")
            self.exitcode = 1
            raise
        self.exitcode = 0

    def _run_with_task_argument(self, task: Any, play_context: Any) -> None:
        """ansible-core up to 2.20: TaskExecutor takes the task and its variables, returns a dict."""
        from ansible.executor.task_result import _RawTaskResult

        try:
            result = AgentTaskExecutor(
                self._host, task, self._task_vars, play_context, self._loader,
                get_plugin_loader_namespace(), self._final_q, self._variable_manager,
            ).run()
        except Exception as exc:  # TaskExecutor reports task errors itself; this is a bug, still a result
            result = {"failed": True, "msg": f"unexpected error in the accelerated worker: {exc}",
                      "exception": traceback.format_exc()}
        self._final_q.send_task_result(_RawTaskResult(
            host=self._host, task=self._task, return_data=result, task_fields=task.dump_attrs(),
        ))

    def _run_in_task_context(self, task: Any, play_context: Any) -> None:
        """ansible-core 2.21+: the task lives in an ambient TaskContext (per thread), results are objects."""
        from ansible._internal._task import UnifiedTaskResult

        task.squash()
        try:
            with _TASK_CONTEXT.create(task=task, task_vars=self._task_vars, host_name=self._host.name):
                result = AgentTaskExecutor(
                    self._host, play_context, self._loader, get_plugin_loader_namespace(), self._final_q,
                    self._variable_manager,
                ).run()
                result.finalize_registered_values()
        except Exception as exc:  # TaskExecutor reports task errors itself; this is a bug, still a result
            result = UnifiedTaskResult.create_from_action_exception(exc)
            result.finalize_registered_values()
        # callbacks read these from the task, resolved after the loop, as a forked worker sends them
        task.ignore_errors = result.ignore_errors
        task.ignore_unreachable = result.ignore_unreachable
        self._final_q.send_task_result(self._host, task, result)


class ThreadedWorkersMixin:
    """Mixed into a stock StrategyModule: `_queue_task` starts a ThreadWorker in a free slot."""

    def _queue_task(self, host: Any, task: Any, task_vars: dict[str, Any], play_context: Any) -> None:
        if task.timeout:
            return super()._queue_task(host, task, task_vars, play_context)  # type: ignore[misc]
        slot = self._free_slot(self._slot_limit(task, task_vars))
        self._queued_task_cache[(host.name, task._uuid)] = {
            "host": host, "task": task, "task_vars": task_vars, "play_context": play_context,
        }
        worker = ThreadWorker(self._final_q, task_vars, host, task, play_context, self._loader, self._variable_manager)
        self._workers[slot] = worker
        self._tqm.send_callback("v2_runner_on_start", host, task)
        worker.start()
        self._pending_results += 1

    def _slot_limit(self, task: Any, task_vars: dict[str, Any]) -> int:
        """forks, or the task's throttle when smaller (the free strategy throttles by itself)."""
        limit = len(self._workers)
        if not self.ALLOW_BASE_THROTTLING or task.run_once:
            return limit
        throttle = int(Templar(loader=self._loader, variables=task_vars).template(task.throttle) or 0)
        return min(limit, throttle) if throttle > 0 else limit

    def _free_slot(self, limit: int) -> int:
        """The first worker slot below `limit` whose worker finished; wait for one when all are busy."""
        while True:
            for slot in range(limit):
                worker = self._workers[slot]
                if worker is None or not worker.is_alive():
                    if worker is not None:
                        worker.close()
                    return slot
            time.sleep(0.0005)
