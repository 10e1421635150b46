"""ANSIBLE verb: payloads built by the real ansible-core, run through a real zygote in tmp_path.

What is proven here: split payloads run like stock AnsiballZ scripts (same JSON), failures and
crashes are FAILED with their reasons, timeouts kill the whole process group, no state leaks
from one run to the next, concurrent runs overlap, a dead zygote is replaced transparently, a zip
carrying other Ansible code makes the zygote start afresh, and unsplittable modules run whole.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accelerator import components
from accelerator.ansiballz import ScriptPayload, ZipPayload, build_module, split_payload
from accelerator.components.ansible import payload_cache_dir
from accelerator.model import JobResult, JobState
from accelerator.zygote import ModuleRequest, Zygote, module_result, run_in_zygote
from tests.unit.context import LocalContext

pytest.importorskip("ansible")

TIMING_KEYS = {"start", "end", "delta"}
REPO_ROOT = Path(__file__).resolve().parents[2]

PROBE_MODULE = '''#!/usr/bin/python
"""Reports what it finds of earlier runs, then leaves traces of its own."""
import os
import time

import ansible.module_utils.basic as basic
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(sleep=dict(type="float", default=0)))
    seen = {
        "env": os.environ.get("ZYGOTE_LEAK"),
        "basic_global": getattr(basic, "_zygote_leak", None),
        "variant": getattr(basic, "_ZYGOTE_VARIANT", None),
        "cwd": os.getcwd(),
    }
    os.environ["ZYGOTE_LEAK"] = "leaked"
    basic._zygote_leak = "leaked"
    os.chdir("/")
    time.sleep(module.params["sleep"])
    module.exit_json(changed=False, seen=seen, ppid=os.getppid(), basic_file=basic.__file__)


if __name__ == "__main__":
    main()
'''

CRASHER_MODULE = '''#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule


def main():
    AnsibleModule(argument_spec={})
    raise RuntimeError("crasher raised on purpose")


if __name__ == "__main__":
    main()
'''

WANT_JSON_MODULE = '''#!/usr/bin/python
# WANT_JSON
import json
import sys

with open(sys.argv[1]) as handle:
    args = json.load(handle)
print(json.dumps({"changed": True, "echo": args["word"]}))
'''

OLD_STYLE_MODULE = '''#!/bin/sh
. "$1"
printf '{"changed": false, "greeting": "hello %s"}\\n' "$name"
'''


@pytest.fixture(autouse=True)
def payload_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the controller's payload cache inside the test's directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return payload_cache_dir()


@pytest.fixture(scope="module")
def shared_zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """One zygote for the tests that only run modules: it also proves reuse across modules."""
    with Zygote(tmp_path_factory.mktemp("zygote")) as zygote:
        yield zygote


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    """A zygote of its own, for tests that kill or re-exec it."""
    with Zygote(tmp_path / "zygote") as fresh:
        yield fresh


@dataclass
class ModuleContext(LocalContext):
    """LocalContext plus the agent's run_module: a real zygote behind ExecContext."""

    zygote: Zygote | None = None

    def run_module(self, request: dict[str, Any], timeout: float | None, raw: bool = False) -> JobResult:
        assert self.zygote is not None
        return run_in_zygote(self.zygote, request, timeout, raw)


def write_module(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(source)
    return path


def zip_payload(name: str, args: dict[str, Any], module_path: Path | None = None) -> ZipPayload:
    payload = build_module(name, args, module_path=str(module_path) if module_path else None)
    assert isinstance(payload, ZipPayload), payload
    return payload


def zip_request(payload: ZipPayload, directory: Path, zip_data: bytes | None = None) -> ModuleRequest:
    """The request an agent builds: the zip as a local file (here: named by its hash)."""
    data = payload.zip_data if zip_data is None else zip_data
    path = directory / f"{hashlib.sha256(data).hexdigest()}.zip"
    path.write_bytes(data)
    return {
        "zip_path": str(path), "module_fqn": payload.module_fqn, "profile": payload.profile,
        "params": payload.params, "extensions": payload.extensions, "rlimit_nofile": payload.rlimit_nofile,
    }


def run_zip(zygote: Zygote, payload: ZipPayload, directory: Path, timeout: float | None = 60) -> JobResult:
    return run_in_zygote(zygote, zip_request(payload, directory), timeout)


def run_stock(script: bytes, directory: Path) -> dict[str, Any]:
    """Run an AnsiballZ script the way stock Ansible does on a target: python3 <file>."""
    path = directory / "AnsiballZ_stock.py"
    path.write_bytes(script)
    completed = subprocess.run([sys.executable, str(path)], capture_output=True, check=False, cwd=directory)
    return json.loads(completed.stdout)


def without_timing(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key not in TIMING_KEYS}


def process_gone(pid: int) -> bool:
    """Dead or a zombie nobody reaped yet (tests may run as PID 1 in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def variant_zip(zip_data: bytes, marker: str) -> bytes:
    """The same zip with a different basic.py: what a newer ansible-core would send."""
    source, target = io.BytesIO(zip_data), io.BytesIO()
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "ansible/module_utils/basic.py":
                data += f"\n_ZYGOTE_VARIANT = {marker!r}\n".encode()
            new.writestr(info, data)
    return target.getvalue()


# -- splitting ---------------------------------------------------------------------------------


def test_split_payload_extracts_zip_and_arguments() -> None:
    payload = zip_payload("ansible.builtin.ping", {"data": "split"})
    assert payload.module_fqn == "ansible.modules.ping"
    assert json.loads(payload.params)["ANSIBLE_MODULE_ARGS"]["data"] == "split"
    with zipfile.ZipFile(io.BytesIO(payload.zip_data)) as archive:
        assert "ansible/modules/ping.py" in archive.namelist()
        assert "ansible/module_utils/basic.py" in archive.namelist()


def test_zip_hash_is_the_same_in_every_controller_process() -> None:
    """Otherwise each CLI call or playbook run would upload every module to every agent again."""
    code = "from accelerator.ansiballz import build_module; print(build_module('ansible.builtin.ping', {}).sha256)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert other.stdout.strip() == zip_payload("ansible.builtin.ping", {"data": "other args"}).sha256


def test_engine_modules_import_without_ansible() -> None:
    code = (
        "import sys; sys.modules['ansible'] = None\n"
        "import accelerator.ansiballz, accelerator.zygote, accelerator.components\n"
        "assert 'ANSIBLE' in accelerator.components.REGISTRY\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_split_payload_keeps_unknown_shapes_whole() -> None:
    assert isinstance(split_payload(b"\x7fELF\x02\x01\x01\x00\xff\xfe"), ScriptPayload)
    assert isinstance(split_payload(b"#!/bin/sh\necho '{}'\n"), ScriptPayload)
    script = _stock_script("ansible.builtin.ping", {})
    future = script.replace(b"\nrlimit_nofile=", b"\nfuture_knob=1,\nrlimit_nofile=")
    payload = split_payload(future)
    assert isinstance(payload, ScriptPayload) and "future_knob" in payload.reason


def _stock_script(name: str, args: dict[str, Any]) -> bytes:
    """The whole AnsiballZ script for a builtin module, as ActionBase would transfer it."""
    from ansible.executor.module_common import modify_module
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    from accelerator.ansiballz import resolve_module

    variables = {"ansible_python_interpreter": sys.executable}
    built = modify_module(
        module_name=name, module_path=resolve_module(name).path, module_args=args,
        templar=Templar(loader=DataLoader(), variables=variables), task_vars=variables,
    )
    return built.b_module_data


# -- modules through the zygote ----------------------------------------------------------------


def test_ping(shared_zygote: Zygote, tmp_path: Path) -> None:
    result = run_zip(shared_zygote, zip_payload("ansible.builtin.ping", {"data": "pong!"}), tmp_path)
    assert result.state is JobState.SUCCESS, result.error
    assert result.data["ping"] == "pong!" and result.changed is False


def test_command(shared_zygote: Zygote, tmp_path: Path) -> None:
    payload = zip_payload("ansible.builtin.command", {"cmd": "echo hi there", "chdir": str(tmp_path)})
    result = run_zip(shared_zygote, payload, tmp_path)
    assert result.state is JobState.SUCCESS, result.error
    assert result.stdout == "hi there" and result.data["rc"] == 0 and result.changed is True


def test_file(shared_zygote: Zygote, tmp_path: Path) -> None:
    target = tmp_path / "made" / "here"
    payload = zip_payload("ansible.builtin.file", {"path": str(target), "state": "directory", "mode": "0750"})
    first = run_zip(shared_zygote, payload, tmp_path)
    assert first.state is JobState.SUCCESS, first.error
    assert target.is_dir() and (target.stat().st_mode & 0o777) == 0o750 and first.changed
    assert run_zip(shared_zygote, payload, tmp_path).changed is False


def test_copy_content_through_the_verb(shared_zygote: Zygote, tmp_path: Path) -> None:
    verb = components.get("ANSIBLE")
    dest = tmp_path / "out" / "greeting.txt"
    dest.parent.mkdir()
    parsed = verb.parse({"module": "ansible.builtin.copy", "args": {"content": "hello\n", "dest": str(dest), "mode": "0640"}})
    module_args = json.loads(parsed.args["params"])["ANSIBLE_MODULE_ARGS"]
    assert "content" not in module_args and set(parsed.args["files"]) == {"src"}
    context = ModuleContext(allowed_roots=(tmp_path,), state_dir=tmp_path / "state", zygote=shared_zygote)
    context.add_uploads(parsed)
    first = verb.execute(parsed.args, context)
    assert first.state is JobState.SUCCESS, first.error
    assert dest.read_text() == "hello\n" and (dest.stat().st_mode & 0o777) == 0o640 and first.changed
    second = verb.execute(parsed.args, context)
    assert second.state is JobState.SUCCESS and second.changed is False
    assert all(path.exists() for path in parsed.uploads.values()), "cached blobs must never be moved"


def test_verb_parses_module_lines(shared_zygote: Zygote, tmp_path: Path) -> None:
    verb = components.get("ANSIBLE")
    context = ModuleContext(allowed_roots=(tmp_path,), state_dir=tmp_path / "state", zygote=shared_zygote)
    for line in ('ansible.builtin.command cmd="echo hi"', "--timeout 30 command echo hi"):
        parsed = verb.parse(line)
        assert parsed.uploads[parsed.args["sha256"]] == payload_cache_dir() / f"{parsed.args['sha256']}.zip"
        context.add_uploads(parsed)
        result = verb.execute(parsed.args, context)
        assert result.state is JobState.SUCCESS and result.stdout == "hi", result.error
    assert verb.parse("--timeout 30 command echo hi").timeout == 30


def test_failing_module_is_failed(shared_zygote: Zygote, tmp_path: Path) -> None:
    payload = zip_payload("ansible.builtin.command", {"argv": ["/nonexistent/binary", "x"]})
    result = run_zip(shared_zygote, payload, tmp_path)
    assert result.state is JobState.FAILED and result.rc != 0
    assert "/nonexistent/binary" in result.error and result.data["failed"] is True


def test_crashing_module_reports_its_traceback(shared_zygote: Zygote, tmp_path: Path) -> None:
    module = write_module(tmp_path, "crasher", CRASHER_MODULE)
    payload = zip_payload("crasher", {"_ansible_tracebacks_for": ["error"]}, module)
    result = run_zip(shared_zygote, payload, tmp_path)
    assert result.state is JobState.FAILED
    assert "crasher raised on purpose" in result.error
    assert "Traceback (most recent call last)" in result.error and "crasher.py" in result.error


def test_non_json_output_is_failed_with_excerpts() -> None:
    from accelerator.zygote import RunOutcome

    result = module_result(RunOutcome(rc=0, stdout="oops" * 1000, stderr="bad"), time.time(), None)
    assert result.state is JobState.FAILED and "not JSON" in result.error
    assert "oops" in result.error and "bad" in result.error and len(result.error) < 5000


def test_results_equal_stock_ansible(shared_zygote: Zygote, tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("ansible.builtin.ping", {"data": "same"}),
        ("ansible.builtin.command", {"cmd": "echo same", "chdir": str(tmp_path)}),
        ("ansible.builtin.file", {"path": str(tmp_path / "exists"), "state": "directory"}),
        ("ansible.builtin.stat", {"path": str(tmp_path / "exists"), "get_checksum": False}),
    ]
    for name, args in cases:
        script = _stock_script(name, args)
        payload = split_payload(script)
        assert isinstance(payload, ZipPayload)
        ours = run_zip(shared_zygote, payload, tmp_path)
        assert ours.state is JobState.SUCCESS, ours.error
        stock = run_stock(script, tmp_path)
        if name.endswith("stat"):  # atime moves when stock python reads the directory
            for result in (ours.data, stock):
                result["stat"].pop("atime")
        assert without_timing(ours.data) == without_timing(stock), name


# -- process control ---------------------------------------------------------------------------


def test_timeout_kills_the_process_group(shared_zygote: Zygote, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    payload = zip_payload("ansible.builtin.command", {"argv": ["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]})
    started = time.monotonic()
    result = run_zip(shared_zygote, payload, tmp_path, timeout=1.5)
    assert time.monotonic() - started < 15
    assert result.state is JobState.FAILED and "timed out" in result.error
    assert wait_until(pidfile.exists)
    assert wait_until(lambda: process_gone(int(pidfile.read_text()))), "the module's grandchild survived"


def test_runs_do_not_leak_state(zygote: Zygote, tmp_path: Path) -> None:
    payload = zip_payload("probe", {}, write_module(tmp_path, "probe", PROBE_MODULE))
    request = zip_request(payload, tmp_path)
    for _ in range(2):
        result = run_in_zygote(zygote, request, 60)
        assert result.state is JobState.SUCCESS, result.error
        assert result.data["seen"] == {"env": None, "basic_global": None, "variant": None, "cwd": os.getcwd()}
        assert result.data["ppid"] == zygote.pid, "the run was not forked from the zygote"
        assert result.data["basic_file"].startswith(request["zip_path"]), "Ansible code must come from the zip"
    assert "ZYGOTE_LEAK" not in os.environ


def test_concurrent_requests_overlap(shared_zygote: Zygote, tmp_path: Path) -> None:
    payload = zip_payload("ansible.builtin.command", {"argv": ["sleep", "1"]})
    request = zip_request(payload, tmp_path)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run_in_zygote(shared_zygote, request, 30), range(4)))
    assert all(result.state is JobState.SUCCESS for result in results), [r.error for r in results]
    assert time.monotonic() - started < 3.5, "four 1 s runs did not overlap"


def test_killed_zygote_is_restarted(zygote: Zygote, tmp_path: Path) -> None:
    payload = zip_payload("ansible.builtin.ping", {})
    assert run_zip(zygote, payload, tmp_path).ok
    first_pid = zygote.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    assert wait_until(lambda: not zygote.alive)
    result = run_zip(zygote, payload, tmp_path)
    assert result.ok, result.error
    assert zygote.pid not in (None, first_pid)


def test_zygote_dying_mid_run_fails_that_run(zygote: Zygote, tmp_path: Path) -> None:
    payload = zip_payload("ansible.builtin.command", {"argv": ["sleep", "5"]})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_zip, zygote, payload, tmp_path)
        assert wait_until(lambda: zygote.pid is not None and zygote.alive)
        time.sleep(0.5)
        os.kill(zygote.pid or 0, signal.SIGKILL)
        result = running.result(timeout=30)
    assert result.state is JobState.FAILED and "zygote exited" in result.error


def test_other_ansible_code_gets_a_fresh_zygote(zygote: Zygote, tmp_path: Path) -> None:
    payload = zip_payload("probe2", {"sleep": 1}, write_module(tmp_path, "probe2", PROBE_MODULE))
    original = zip_request(payload, tmp_path)
    newer = zip_request(payload, tmp_path, zip_data=variant_zip(payload.zip_data, "newer"))
    assert run_in_zygote(zygote, original, 30).data["seen"]["variant"] is None
    pid = zygote.pid
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the newer zip arrives while a run is in flight
        in_flight = pool.submit(run_in_zygote, zygote, original, 30)
        time.sleep(0.3)
        switched = pool.submit(run_in_zygote, zygote, newer, 30)
        results = [in_flight.result(), switched.result()]
    assert all(result.ok for result in results), [r.error for r in results]
    assert [r.data["seen"]["variant"] for r in results] == [None, "newer"]
    assert run_in_zygote(zygote, original, 30).data["seen"]["variant"] is None
    assert zygote.pid == pid, "re-exec keeps the process; only a crash replaces it"


# -- whole-script fallback ---------------------------------------------------------------------


def test_want_json_module_runs_as_a_script(zygote: Zygote, tmp_path: Path) -> None:
    payload = build_module("echoer", {"word": "hi"}, module_path=str(write_module(tmp_path, "echoer", WANT_JSON_MODULE)))
    assert isinstance(payload, ScriptPayload) and payload.args_text is not None
    result = run_in_zygote(zygote, _script_request(payload, tmp_path), 30)
    assert result.state is JobState.SUCCESS, result.error
    assert result.data == {"changed": True, "echo": "hi"} and result.changed


def test_old_style_module_runs_with_its_interpreter(zygote: Zygote, tmp_path: Path) -> None:
    module = tmp_path / "greeter"
    module.write_text(OLD_STYLE_MODULE)
    payload = build_module("greeter", {"name": "world"}, module_path=str(module))
    assert isinstance(payload, ScriptPayload) and payload.interpreter == ["/bin/sh"]
    result = run_in_zygote(zygote, _script_request(payload, tmp_path), 30)
    assert result.state is JobState.SUCCESS, result.error
    assert result.data["greeting"] == "hello world"


def _script_request(payload: ScriptPayload, directory: Path) -> ModuleRequest:
    path = directory / f"{payload.sha256}.script"
    path.write_bytes(payload.script)
    return {"kind": "script", "script_path": str(path), "interpreter": payload.interpreter, "args_text": payload.args_text}


# -- timing (printed, not asserted) ------------------------------------------------------------


def test_timing_report(shared_zygote: Zygote, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = 50
    started = time.perf_counter()
    build_module("ansible.builtin.ping", {"data": "timing"})
    second_build = time.perf_counter() - started
    script = _stock_script("ansible.builtin.ping", {})
    payload = split_payload(script)
    assert isinstance(payload, ZipPayload)
    request = zip_request(payload, tmp_path)
    script_path = tmp_path / "AnsiballZ_ping.py"
    script_path.write_bytes(script)
    run_in_zygote(shared_zygote, request, 30)  # warm: the zygote has seen this zip
    started = time.perf_counter()
    for _ in range(runs):
        assert run_in_zygote(shared_zygote, request, 30).ok
    zygote_ms = (time.perf_counter() - started) / runs * 1000
    started = time.perf_counter()
    for _ in range(runs):
        subprocess.run([sys.executable, str(script_path)], capture_output=True, check=True)
    stock_ms = (time.perf_counter() - started) / runs * 1000
    with capsys.disabled():
        print(
            f"\nping x{runs}: zygote {zygote_ms:.1f} ms/run, `python3 AnsiballZ_ping.py` {stock_ms:.1f} ms/run "
            f"({stock_ms / zygote_ms:.1f}x); build_module (cached zip) {second_build * 1000:.1f} ms"
        )
