"""SERVICE: bring services to a run state (and boot-time enablement) with the host's init system.

systemd is used when it is running (/run/systemd/system exists, the test sd_booted() makes);
otherwise the SysV tools: `service NAME ACTION` and `update-rc.d`, which containers and minimal
hosts have.  `changed` is honest: the current state is queried first, and only a start of a
stopped service, a stop of a running one, or an enablement flip counts, while restart and reload
are requests to act and always count.
"""

from __future__ import annotations

import argparse
import enum
import re
import time
from pathlib import Path
from typing import Any, Protocol

from accelerator.components.base import Component, ComponentError, ExecContext, Parsed
from accelerator.components.process import CommandOutcome, run_command
from accelerator.model import JobResult, JobState

SYSTEMD_RUNNING_MARKER = Path("/run/systemd/system")
SYSV_RC_ROOT = Path("/etc")
# Unit and init-script names; refusing the rest keeps a name from being read as an option.
_NAME = re.compile(r"[A-Za-z0-9@_.:+][A-Za-z0-9@_.:+-]*")


class ServiceState(str, enum.Enum):
    """What the user asked the service to be (or to do)."""

    STARTED = "started"
    STOPPED = "stopped"
    RESTARTED = "restarted"
    RELOADED = "reloaded"


# The verb systemctl and `service` both understand for each state.
_COMMANDS = {
    ServiceState.STARTED: "start",
    ServiceState.STOPPED: "stop",
    ServiceState.RESTARTED: "restart",
    ServiceState.RELOADED: "reload",
}


class _InitSystem(Protocol):
    def is_active(self, name: str) -> bool: ...

    def is_enabled(self, name: str) -> bool: ...

    def control(self, name: str, command: str) -> list[str]: ...

    def set_enabled(self, name: str, enabled: bool) -> list[str]: ...


class _Systemd:
    def is_active(self, name: str) -> bool:
        return run_command(["systemctl", "is-active", "--quiet", name]).ok

    def is_enabled(self, name: str) -> bool:
        return run_command(["systemctl", "is-enabled", "--quiet", name]).ok

    def control(self, name: str, command: str) -> list[str]:
        return ["systemctl", command, name]

    def set_enabled(self, name: str, enabled: bool) -> list[str]:
        return ["systemctl", "enable" if enabled else "disable", name]


class _SysV:
    """Debian-style SysV: init scripts in /etc/init.d, boot links in /etc/rcN.d."""

    def is_active(self, name: str) -> bool:
        return run_command(["service", name, "status"]).ok  # LSB: 0 running, 3 stopped

    def is_enabled(self, name: str) -> bool:
        return bool(_rc_links(name, "rc[2345].d/S[0-9][0-9]"))

    def control(self, name: str, command: str) -> list[str]:
        return ["service", name, command]

    def set_enabled(self, name: str, enabled: bool) -> list[str]:
        if enabled and not _rc_links(name, "rc?.d/[SK][0-9][0-9]"):
            return ["update-rc.d", name, "defaults"]  # `enable` aborts when there are no links yet
        return ["update-rc.d", name, "enable" if enabled else "disable"]


def _rc_links(name: str, pattern: str) -> list[Path]:
    return list(SYSV_RC_ROOT.glob(pattern + name))


def _init_system() -> _InitSystem:
    return _Systemd() if SYSTEMD_RUNNING_MARKER.is_dir() else _SysV()


class _CommandFailed(Exception):
    def __init__(self, name: str, outcome: CommandOutcome) -> None:
        super().__init__(f"SERVICE {name}: {outcome.describe()}")
        self.outcome = outcome


class Service(Component):
    verb = "SERVICE"
    help = "Start (default), stop, restart or reload services, and optionally enable or disable them."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        running = parser.add_mutually_exclusive_group()
        for state in ServiceState:
            running.add_argument(f"--{state.value}", action="store_true", help=f"ensure the services are {state.value}")
        boot = parser.add_mutually_exclusive_group()
        boot.add_argument("--enable", action="store_true", help="start the services at boot")
        boot.add_argument("--disable", action="store_true", help="do not start the services at boot")
        parser.add_argument("names", nargs="+", metavar="NAME")

    def finish(self, args: dict[str, Any], base_dir: Path) -> Parsed:
        for name in args["names"]:
            if not _NAME.fullmatch(name):
                raise ComponentError(f"SERVICE: {name!r} is not a valid service name")
        state = next((s for s in ServiceState if args[s.value]), ServiceState.STARTED)
        enabled = True if args["enable"] else False if args["disable"] else None
        return Parsed(args={"names": args["names"], "state": state.value, "enabled": enabled})

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        init = _init_system()
        state = ServiceState(args["state"])
        ran: list[CommandOutcome] = []
        services: list[dict[str, Any]] = []
        try:
            for name in args["names"]:
                services.append(_converge(init, name, state, args.get("enabled"), ran))
        except _CommandFailed as exc:
            return _result(JobState.FAILED, started, ran, services, rc=exc.outcome.rc, error=str(exc))
        return _result(JobState.SUCCESS, started, ran, services, rc=0)


def _converge(
    init: _InitSystem, name: str, state: ServiceState, enabled: bool | None, ran: list[CommandOutcome]
) -> dict[str, Any]:
    """Bring one service to `state` (then to `enabled`), running only the commands needed."""
    changed = False
    if _must_act(init, name, state):
        _run(name, init.control(name, _COMMANDS[state]), ran)
        changed = True
    if enabled is not None and init.is_enabled(name) != enabled:
        _run(name, init.set_enabled(name, enabled), ran)
        changed = True
    return {"name": name, "state": state.value, "enabled": enabled, "changed": changed}


def _must_act(init: _InitSystem, name: str, state: ServiceState) -> bool:
    if state is ServiceState.STARTED:
        return not init.is_active(name)
    if state is ServiceState.STOPPED:
        return init.is_active(name)
    return True  # restart and reload are actions, not states: always done, always a change


def _run(name: str, argv: list[str], ran: list[CommandOutcome]) -> None:
    outcome = run_command(argv)
    ran.append(outcome)
    if not outcome.ok:
        raise _CommandFailed(name, outcome)


def _result(
    state: JobState, started: float, ran: list[CommandOutcome], services: list[dict[str, Any]],
    *, rc: int, error: str = "",
) -> JobResult:
    stderr = "".join(o.stderr for o in ran)
    return JobResult(
        state=state, rc=rc, stdout="".join(o.stdout for o in ran),
        stderr=f"{stderr}{error}" if error else stderr, error=error,
        changed=any(o.ok for o in ran),  # only state-changing commands are recorded in `ran`
        started=started, ended=time.time(), data={"services": services},
    )
