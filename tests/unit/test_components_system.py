"""SERVICE and PKG against the real host tools: a SysV init script under /etc/init.d and apt-get.

These tests run as root on a host without systemd (CI containers), so SERVICE goes through
`service` and `update-rc.d`.  The PKG install test downloads the tiny Debian package 'hello'
from the Debian archive and removes it again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accelerator import components
from accelerator.components.base import ComponentError
from accelerator.components.service import SYSTEMD_RUNNING_MARKER
from accelerator.model import JobResult, JobState
from tests.unit.context import LocalContext

SERVICE_NAME = "directord-test-svc"
INIT_SCRIPT = Path("/etc/init.d") / SERVICE_NAME
PID_FILE = Path("/run") / f"{SERVICE_NAME}.pid"
INIT_SCRIPT_TEXT = f"""#!/bin/sh
### BEGIN INIT INFO
# Provides:          {SERVICE_NAME}
# Required-Start:
# Required-Stop:
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: throwaway service for the accelerator's SERVICE tests
### END INIT INFO
PIDFILE={PID_FILE}
running() {{ [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }}
case "$1" in
  start) running || {{ sleep 1000 >/dev/null 2>&1 & echo $! > "$PIDFILE"; }} ;;
  stop) if running; then kill "$(cat "$PIDFILE")"; fi; rm -f "$PIDFILE" ;;
  restart|reload|force-reload) "$0" stop; "$0" start ;;
  status) running || exit 3 ;;
  *) echo "usage: $0 {{start|stop|restart|reload|status}}" >&2; exit 2 ;;
esac
"""
HELLO = "hello"


@pytest.fixture
def ctx(tmp_path: Path) -> LocalContext:
    return LocalContext(allowed_roots=(tmp_path,), state_dir=tmp_path / "state")


def run(verb: str, spec: str | dict[str, Any], ctx: LocalContext) -> JobResult:
    component = components.get(verb)
    return component.execute(component.parse(spec).args, ctx)


# -- SERVICE ----------------------------------------------------------------------------------


def _daemon_pid() -> int | None:
    """The test daemon's pid when it is really alive, read without going through `service`."""
    try:
        pid = int(PID_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() and _state(pid) != "Z" else None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


@pytest.fixture
def sysv_service() -> Iterator[str]:
    """A real SysV init script, installed for one test and removed (with its daemon and links) after."""
    if shutil.which("service") is None:
        pytest.fail("the `service` command is missing: install the 'init-system-helpers' Debian package")
    if SYSTEMD_RUNNING_MARKER.is_dir():
        pytest.skip("systemd is running here: SERVICE would use systemctl, and this test exercises SysV")
    INIT_SCRIPT.write_text(INIT_SCRIPT_TEXT)
    INIT_SCRIPT.chmod(0o755)
    try:
        yield SERVICE_NAME
    finally:
        subprocess.run([str(INIT_SCRIPT), "stop"], check=False)
        subprocess.run(["update-rc.d", "-f", SERVICE_NAME, "remove"], check=False, capture_output=True)
        INIT_SCRIPT.unlink()
        PID_FILE.unlink(missing_ok=True)


def _boot_links() -> dict[str, str]:
    """{"rc2.d": "S", "rc0.d": "K", ...}: whether each runlevel starts or kills the test service."""
    return {p.parent.name: p.name[0] for p in Path("/etc").glob(f"rc?.d/[SK][0-9][0-9]{SERVICE_NAME}")}


def test_service_start_is_changed_once(ctx: LocalContext, sysv_service: str) -> None:
    first = run("SERVICE", sysv_service, ctx)
    assert first.state is JobState.SUCCESS, first.error
    assert first.changed
    pid = _daemon_pid()
    assert pid is not None
    second = run("SERVICE", f"--started {sysv_service}", ctx)
    assert second.state is JobState.SUCCESS, second.error
    assert not second.changed
    assert second.data["services"] == [{"name": sysv_service, "state": "started", "enabled": None, "changed": False}]
    assert _daemon_pid() == pid


def test_service_stop(ctx: LocalContext, sysv_service: str) -> None:
    run("SERVICE", sysv_service, ctx)
    pid = _daemon_pid()
    stopped = run("SERVICE", f"--stopped {sysv_service}", ctx)
    assert stopped.state is JobState.SUCCESS, stopped.error
    assert stopped.changed
    _wait_gone(pid)
    assert _daemon_pid() is None
    again = run("SERVICE", f"--stopped {sysv_service}", ctx)
    assert again.state is JobState.SUCCESS and not again.changed


def test_service_restart_and_reload_always_change(ctx: LocalContext, sysv_service: str) -> None:
    run("SERVICE", sysv_service, ctx)
    old = _daemon_pid()
    restarted = run("SERVICE", {"restarted": True, "names": [sysv_service]}, ctx)
    assert restarted.state is JobState.SUCCESS, restarted.error
    assert restarted.changed
    new = _daemon_pid()
    assert new is not None and new != old
    reloaded = run("SERVICE", f"--reloaded {sysv_service}", ctx)
    assert reloaded.state is JobState.SUCCESS and reloaded.changed


def test_service_enable_and_disable(ctx: LocalContext, sysv_service: str) -> None:
    enabled = run("SERVICE", f"--enable {sysv_service}", ctx)
    assert enabled.state is JobState.SUCCESS, enabled.error
    assert enabled.changed  # started and enabled
    assert _boot_links()["rc2.d"] == "S"
    assert not run("SERVICE", f"--enable {sysv_service}", ctx).changed
    disabled = run("SERVICE", f"--disable {sysv_service}", ctx)
    assert disabled.state is JobState.SUCCESS and disabled.changed
    assert "S" not in _boot_links().values()
    assert not run("SERVICE", f"--disable {sysv_service}", ctx).changed
    assert run("SERVICE", f"--enable {sysv_service}", ctx).changed  # links exist now: `enable`, not `defaults`
    assert _boot_links()["rc3.d"] == "S"


def test_service_unknown_name_fails_with_the_tool_output(ctx: LocalContext) -> None:
    result = run("SERVICE", "directord-no-such-service", ctx)
    assert result.state is JobState.FAILED
    assert "directord-no-such-service" in result.error
    assert result.rc not in (0, None)
    assert not result.changed


@pytest.mark.parametrize("spec", ["--started --stopped x", "--enable --disable x", "--restarted", "'bad name'"])
def test_service_rejects_bad_arguments(spec: str) -> None:
    with pytest.raises(ComponentError, match="SERVICE"):
        components.get("SERVICE").parse(spec)


def _wait_gone(pid: int | None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and _state(pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)


# -- PKG --------------------------------------------------------------------------------------


def _dpkg_installed(name: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.endswith(" installed")


@pytest.fixture
def apt() -> None:
    if shutil.which("apt-get") is None:
        pytest.fail("these tests expect a Debian host with apt-get (the CI image is Debian)")


def test_pkg_present_of_installed_package_is_unchanged(ctx: LocalContext, apt: None) -> None:
    result = run("PKG", "coreutils", ctx)
    assert result.state is JobState.SUCCESS, result.error
    assert not result.changed
    assert result.data["manager"] == "apt-get"
    assert result.data["packages"][0]["before"] is not None


def test_pkg_absent_of_missing_package_is_unchanged(ctx: LocalContext, apt: None) -> None:
    result = run("PKG", "--state absent directord-no-such-package", ctx)
    assert result.state is JobState.SUCCESS, result.error
    assert not result.changed


def test_pkg_unknown_package_fails_with_manager_stderr(ctx: LocalContext, apt: None) -> None:
    result = run("PKG", "directord-no-such-package", ctx)
    assert result.state is JobState.FAILED
    assert "Unable to locate package directord-no-such-package" in result.stderr
    assert not result.changed


@pytest.mark.parametrize("spec", ["--state gone x", "--state present", "-- -x"])
def test_pkg_rejects_bad_arguments(spec: str) -> None:
    with pytest.raises(ComponentError, match="PKG"):
        components.get("PKG").parse(spec)


def _ensure_hello_candidate() -> None:
    policy = subprocess.run(["apt-cache", "policy", HELLO], capture_output=True, text=True, check=False).stdout
    if "Candidate:" not in policy or "Candidate: (none)" in policy:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def test_pkg_install_and_remove_hello_slow_network(ctx: LocalContext, apt: None) -> None:
    """Slow: fetches 'hello' from the Debian archive.  Leaves the host as it found it."""
    if _dpkg_installed(HELLO):
        pytest.skip(f"{HELLO!r} is already installed; this test installs and removes it")
    _ensure_hello_candidate()
    try:
        installed = run("PKG", HELLO, ctx)
        assert installed.state is JobState.SUCCESS, installed.error
        assert installed.changed
        assert _dpkg_installed(HELLO)
        assert installed.data["packages"][0]["after"] is not None
        assert not run("PKG", f"--state latest {HELLO}", ctx).changed
        removed = run("PKG", f"--state absent {HELLO}", ctx)
        assert removed.state is JobState.SUCCESS, removed.error
        assert removed.changed
        assert not _dpkg_installed(HELLO)
        assert not run("PKG", f"--state absent {HELLO}", ctx).changed
    finally:
        if _dpkg_installed(HELLO):
            subprocess.run(["apt-get", "-y", "-q", "remove", HELLO], check=False, capture_output=True)
