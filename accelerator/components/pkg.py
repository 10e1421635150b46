"""PKG: make packages present, absent or latest with whatever package manager the host has.

The installed version of each package is read before and after, so the manager runs only for
packages whose state differs and `changed` reports what really moved, never what was merely
asked for.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerator.components.base import Component, ComponentError, ExecContext, Parsed
from accelerator.components.process import CommandOutcome, run_command
from accelerator.model import JobResult, JobState

# Package names as the managers accept them (incl. "name=version", "name:arch"); a leading '-'
# would be read as an option.
_NAME = re.compile(r"[^\s-]\S*")


class PackageState(str, enum.Enum):
    PRESENT = "present"
    ABSENT = "absent"
    LATEST = "latest"


def _dpkg_version(name: str) -> str | None:
    outcome = run_command(["dpkg-query", "-W", "-f=${Status} ${Version}\n", name])
    for line in outcome.stdout.splitlines() if outcome.ok else []:
        words = line.split()  # "install ok installed 2.10-3"; removed ones have another 3rd word
        if len(words) == 4 and words[2] == "installed":
            return words[3]
    return None


def _rpm_version(name: str) -> str | None:
    outcome = run_command(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}\n", name])
    return ",".join(sorted(outcome.stdout.split())) if outcome.ok else None  # kernels: several


def _apk_version(name: str) -> str | None:
    outcome = run_command(["apk", "list", "--installed", name])
    words = outcome.stdout.split()  # "name-1.2-r0 x86_64 {origin} (license) [installed]"
    return words[0] if outcome.ok and words else None


@dataclass(frozen=True, slots=True)
class PackageManager:
    """How one manager installs, removes and upgrades, and how to ask what is installed."""

    program: str
    installed_version: Callable[[str], str | None]
    install: tuple[str, ...]
    remove: tuple[str, ...]
    upgrade: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


# In order of preference: dnf before yum because yum is a compatibility shim where both exist.
MANAGERS = (
    PackageManager(
        "apt-get", _dpkg_version,
        # Wait for the dpkg lock (unattended-upgrades) instead of failing at once.
        install=("apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=300", "install"),
        remove=("apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=300", "remove"),
        upgrade=("apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=300", "install", "--only-upgrade"),
        env={"DEBIAN_FRONTEND": "noninteractive"},  # no debconf prompt may block an agent
    ),
    PackageManager("dnf", _rpm_version, ("dnf", "-y", "install"), ("dnf", "-y", "remove"), ("dnf", "-y", "upgrade")),
    PackageManager("yum", _rpm_version, ("yum", "-y", "install"), ("yum", "-y", "remove"), ("yum", "-y", "update")),
    PackageManager(
        "zypper", _rpm_version, ("zypper", "--non-interactive", "install"),
        ("zypper", "--non-interactive", "remove"), ("zypper", "--non-interactive", "update"),
    ),
    PackageManager("apk", _apk_version, ("apk", "add"), ("apk", "del"), ("apk", "add", "--upgrade")),
)


def detect_manager() -> PackageManager | None:
    return next((m for m in MANAGERS if shutil.which(m.program)), None)


class Pkg(Component):
    verb = "PKG"
    help = "Install, remove or upgrade packages with the host's package manager."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--state", choices=[s.value for s in PackageState], default=PackageState.PRESENT.value,
            help="present (default), absent, or latest",
        )
        parser.add_argument("names", nargs="+", metavar="NAME")

    def finish(self, args: dict[str, Any], base_dir: Path) -> Parsed:
        for name in args["names"]:
            if not _NAME.fullmatch(name):
                raise ComponentError(f"PKG: {name!r} is not a valid package name")
        return Parsed(args={"names": args["names"], "state": args["state"]})

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        manager = detect_manager()
        if manager is None:
            programs = ", ".join(m.program for m in MANAGERS)
            return JobResult.failure(f"PKG: no supported package manager found (looked for {programs})")
        names: list[str] = args["names"]
        before = {name: manager.installed_version(name) for name in names}
        ran: list[CommandOutcome] = []
        env = {**os.environ, **manager.env}
        for argv in _commands(manager, PackageState(args["state"]), before):
            outcome = run_command(argv, env)
            ran.append(outcome)
            if not outcome.ok:
                return _result(manager, started, ran, before, error=f"PKG: {outcome.describe()}")
        return _result(manager, started, ran, before)


def _commands(manager: PackageManager, state: PackageState, before: dict[str, str | None]) -> list[list[str]]:
    """The manager invocations needed: only packages whose state differs are named."""
    missing = [name for name, version in before.items() if version is None]
    installed = [name for name, version in before.items() if version is not None]
    wanted = {
        PackageState.PRESENT: [(manager.install, missing)],
        PackageState.ABSENT: [(manager.remove, installed)],
        PackageState.LATEST: [(manager.install, missing), (manager.upgrade, installed)],
    }[state]
    return [[*command, *targets] for command, targets in wanted if targets]


def _result(
    manager: PackageManager, started: float, ran: list[CommandOutcome], before: dict[str, str | None],
    error: str = "",
) -> JobResult:
    """Report each package's version before and after, read again from the system, not assumed."""
    packages = []
    for name, was in before.items():
        now = manager.installed_version(name) if ran else was
        packages.append({"name": name, "before": was, "after": now, "changed": now != was})
    stderr = "".join(o.stderr for o in ran)
    return JobResult(
        state=JobState.FAILED if error else JobState.SUCCESS, rc=ran[-1].rc if ran else 0,
        stdout="".join(o.stdout for o in ran), stderr=f"{stderr}{error}" if error else stderr, error=error,
        changed=any(p["changed"] for p in packages), started=started, ended=time.time(),
        data={"manager": manager.program, "packages": packages},
    )
