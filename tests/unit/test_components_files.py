"""COPY/ADD and WAIT, run for real: files land in tmp_path, URLs are served on loopback.

Tests run as root, so ownership is checked by chowning to 'nobody'.
"""

from __future__ import annotations

import grp
import http.server
import pwd
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accelerator import components
from accelerator.components.base import ComponentError
from accelerator.model import JobResult, JobState
from tests.unit.context import LocalContext


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The only directory the agent may write below."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def ctx(tmp_path: Path, root: Path) -> LocalContext:
    return LocalContext(allowed_roots=(root,), state_dir=tmp_path / "state")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """The controller's side: an orchestration directory holding the sources."""
    path = tmp_path / "src"
    path.mkdir()
    return path


def run(verb: str, spec: str | dict[str, Any], ctx: LocalContext, base_dir: Path = Path(".")) -> JobResult:
    """Controller parse, then agent execute, with the uploads handed over as the server would."""
    component = components.get(verb)
    parsed = component.parse(spec, base_dir)
    ctx.add_uploads(parsed)
    return component.execute(parsed.args, ctx)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# -- COPY / ADD -------------------------------------------------------------------------------


def test_copy_file_sets_mode_and_owner(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "app.conf", "port = 80\n")
    result = run("COPY", f"--chmod 0640 --chown nobody:nogroup app.conf {root}/etc/app.conf", ctx, src)
    assert result.state is JobState.SUCCESS, result.error
    target = root / "etc" / "app.conf"
    info = target.stat()
    assert target.read_text() == "port = 80\n"
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_uid == pwd.getpwnam("nobody").pw_uid
    assert info.st_gid == grp.getgrnam("nogroup").gr_gid
    assert result.changed
    assert result.data["files"] == [{"dest": str(target), "sha256": result.data["files"][0]["sha256"], "changed": True}]


def test_copy_keeps_the_source_mode_and_accepts_numeric_owner(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "run.sh", "#!/bin/sh\n", mode=0o750)
    result = run("COPY", f"--chown 65534:65534 run.sh {root}/bin/run.sh", ctx, src)
    assert result.state is JobState.SUCCESS, result.error
    info = (root / "bin" / "run.sh").stat()
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert (info.st_uid, info.st_gid) == (65534, 65534)


def test_copy_into_a_directory(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "a.txt", "a\n")
    (root / "existing").mkdir()
    assert run("COPY", f"a.txt {root}/existing", ctx, src).ok
    assert run("COPY", f"a.txt {root}/new/", ctx, src).ok
    assert (root / "existing" / "a.txt").read_text() == "a\n"
    assert (root / "new" / "a.txt").read_text() == "a\n"


def test_copy_directory_keeps_relative_paths(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "tree" / "top.txt", "top\n")
    write(src / "tree" / "sub" / "deep" / "leaf.sh", "leaf\n", mode=0o700)
    result = run("COPY", f"tree {root}/dest", ctx, src)
    assert result.state is JobState.SUCCESS, result.error
    assert (root / "dest" / "top.txt").read_text() == "top\n"
    assert stat.S_IMODE((root / "dest" / "sub" / "deep" / "leaf.sh").stat().st_mode) == 0o700
    assert [f["dest"] for f in result.data["files"]] == [
        str(root / "dest" / "sub" / "deep" / "leaf.sh"),
        str(root / "dest" / "top.txt"),
    ]


def test_directory_parse_uploads_every_file(src: Path, root: Path) -> None:
    write(src / "tree" / "one", "1")
    write(src / "tree" / "two" / "three", "3")
    parsed = components.get("COPY").parse(f"tree {root}", src)
    assert sorted(parsed.uploads.values()) == [src / "tree" / "one", src / "tree" / "two" / "three"]
    assert [f["path"] for f in parsed.args["files"]] == ["one", "two/three"]
    assert {f["size"] for f in parsed.args["files"]} == {1}


def test_copy_is_idempotent(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "motd", "hello\n")
    spec = f"--chmod 0600 --chown nobody motd {root}/motd"
    assert run("COPY", spec, ctx, src).changed
    before = (root / "motd").stat()
    time.sleep(0.01)  # a rewrite would now show up as a new mtime
    again = run("COPY", spec, ctx, src)
    after = (root / "motd").stat()
    assert again.state is JobState.SUCCESS
    assert not again.changed
    assert again.data["files"][0]["changed"] is False
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_copy_fixes_mode_in_place_and_rewrites_changed_content(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "f", "one\n")
    run("COPY", f"--chmod 0644 f {root}/f", ctx, src)
    inode = (root / "f").stat().st_ino
    mode_only = run("COPY", f"--chmod 0600 f {root}/f", ctx, src)
    assert mode_only.changed
    assert (root / "f").stat().st_ino == inode
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o600
    write(src / "f", "two\n")
    assert run("COPY", f"--chmod 0600 f {root}/f", ctx, src).changed
    assert (root / "f").read_text() == "two\n"
    assert [p.name for p in root.iterdir()] == ["f"]  # no temporary file left behind


def test_copy_refuses_dotdot_escape(ctx: LocalContext, src: Path, root: Path, tmp_path: Path) -> None:
    write(src / "evil", "x")
    result = run("COPY", f"evil {root}/../escaped", ctx, src)
    assert result.state is JobState.FAILED
    assert f"{root}/../escaped" in result.error
    assert str(root) in result.error and "allowed root" in result.error
    assert not (tmp_path / "escaped").exists()


def test_copy_refuses_symlink_escape(ctx: LocalContext, src: Path, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    write(src / "evil", "x")
    result = run("COPY", f"evil {root}/link/evil", ctx, src)
    assert result.state is JobState.FAILED
    assert str(outside / "evil") in result.error
    assert list(outside.iterdir()) == []


def test_directory_copy_writes_nothing_when_one_destination_escapes(
    ctx: LocalContext, src: Path, root: Path, tmp_path: Path
) -> None:
    write(src / "tree" / "a", "a")
    write(src / "tree" / "b" / "c", "c")
    (root / "dest" / "b").parent.mkdir()
    (root / "dest" / "b").symlink_to(tmp_path)
    result = run("COPY", f"tree {root}/dest", ctx, src)
    assert result.state is JobState.FAILED
    assert not (root / "dest" / "a").exists()
    assert not (tmp_path / "c").exists()


def test_copy_blueprint_renders_on_the_agent(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "tpl", "listen {{ host }}:{{ port }}\n")
    ctx.variables.update(host="10.0.0.1", port=8080, dir=str(root))
    result = run("COPY", "--blueprint tpl '{{ dir }}/out.conf'", ctx, src)
    assert result.state is JobState.SUCCESS, result.error
    assert (root / "out.conf").read_text() == "listen 10.0.0.1:8080\n"
    assert not run("COPY", "--blueprint tpl '{{ dir }}/out.conf'", ctx, src).changed
    ctx.variables["port"] = 9090
    assert run("COPY", "--blueprint tpl '{{ dir }}/out.conf'", ctx, src).changed
    assert (root / "out.conf").read_text() == "listen 10.0.0.1:9090\n"


def test_copy_blueprint_with_undefined_variable_fails(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "tpl", "{{ missing_var }}\n")
    result = run("COPY", f"--blueprint tpl {root}/out", ctx, src)
    assert result.state is JobState.FAILED
    assert "missing_var" in result.error
    assert not (root / "out").exists()


def test_copy_without_blueprint_keeps_braces(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "raw", "{{ not_rendered }}\n")
    assert run("COPY", f"raw {root}/raw", ctx, src).ok
    assert (root / "raw").read_text() == "{{ not_rendered }}\n"


def test_copy_missing_source_fails_at_parse(src: Path, root: Path) -> None:
    with pytest.raises(ComponentError, match=r"COPY: source .*/no-such-file does not exist"):
        components.get("COPY").parse(f"no-such-file {root}/x", src)


def test_copy_unknown_user_fails_clearly(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "f", "x")
    result = run("COPY", f"--chown no-such-user-xyz f {root}/f", ctx, src)
    assert result.state is JobState.FAILED
    assert "unknown user 'no-such-user-xyz'" in result.error
    assert not (root / "f").exists()


@pytest.mark.parametrize("spec", ["--chmod 0999 f /x", "--chmod 17777 f /x", "--chown user: f /x", "f"])
def test_copy_rejects_bad_arguments(src: Path, spec: str) -> None:
    write(src / "f", "x")
    with pytest.raises(ComponentError, match="COPY"):
        components.get("COPY").parse(spec, src)


def test_copy_relative_destination_fails(ctx: LocalContext, src: Path) -> None:
    write(src / "f", "x")
    result = run("COPY", "f relative/f", ctx, src)
    assert result.state is JobState.FAILED
    assert "absolute" in result.error


def test_add_is_copy_from_a_map(ctx: LocalContext, src: Path, root: Path) -> None:
    write(src / "f", "mapped\n")
    result = run("ADD", {"src": "f", "dest": f"{root}/f", "chmod": "0600", "blueprint": False}, ctx, src)
    assert result.state is JobState.SUCCESS, result.error
    assert (root / "f").read_text() == "mapped\n"
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o600


# -- WAIT -------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` GETs, then the configured status."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        server: Any = self.server
        server.hits += 1
        status = 503 if server.hits <= server.failures else server.status
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "http://127.0.0.1:1/nowhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""


@pytest.fixture
def http_server() -> Iterator[Any]:
    server: Any = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    server.hits, server.failures, server.status = 0, 0, 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _url(server: Any) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/health"


def test_wait_seconds(ctx: LocalContext) -> None:
    started = time.monotonic()
    result = run("WAIT", "--seconds 0.3", ctx)
    assert time.monotonic() - started >= 0.3
    assert result.state is JobState.SUCCESS
    assert not result.changed


def test_wait_url_until_healthy(ctx: LocalContext, http_server: Any) -> None:
    http_server.failures = 2
    result = run("WAIT", f"--url {_url(http_server)} --retry 5 --retry-wait 0.05", ctx)
    assert result.state is JobState.SUCCESS, result.error
    assert http_server.hits == 3
    assert result.data["attempts"] == 3
    assert not result.changed


def test_wait_url_counts_a_redirect_as_up(ctx: LocalContext, http_server: Any) -> None:
    http_server.status = 302
    result = run("WAIT", f"--url {_url(http_server)} --retry 0", ctx)
    assert result.state is JobState.SUCCESS, result.error
    assert http_server.hits == 1


def test_wait_url_fails_after_retries_with_last_error(ctx: LocalContext, http_server: Any) -> None:
    http_server.failures = 100
    result = run("WAIT", {"url": _url(http_server), "retry": 2, "retry_wait": 0.01}, ctx)
    assert result.state is JobState.FAILED
    assert http_server.hits == 3
    assert "after 3 attempts" in result.error and "HTTP 503" in result.error


def test_wait_url_unreachable(ctx: LocalContext) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run("WAIT", f"--url http://127.0.0.1:{port}/ --retry 1 --retry-wait 0", ctx)
    assert result.state is JobState.FAILED
    assert "cannot reach" in result.error


def test_wait_cmd_succeeds_on_third_try(ctx: LocalContext, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    command = f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}; [ "$n" -ge 3 ]'
    result = run("WAIT", {"cmd": command, "retry": 5, "retry_wait": 0.01}, ctx)
    assert result.state is JobState.SUCCESS, result.error
    assert counter.read_text().strip() == "3"
    assert result.data["attempts"] == 3


def test_wait_cmd_fails_after_retries(ctx: LocalContext, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    result = run("WAIT", f"--cmd 'echo try >> {counter}; echo nope >&2; exit 4' --retry 2 --retry-wait 0", ctx)
    assert result.state is JobState.FAILED
    assert counter.read_text().count("try") == 3
    assert "exited 4: nope" in result.error
    assert not result.changed


def test_wait_cmd_sees_env_and_variables(ctx: LocalContext) -> None:
    ctx.environment["WAIT_TEST"] = "from-env"
    ctx.variables["expected"] = "from-env"
    assert run("WAIT", '--cmd \'[ "$WAIT_TEST" = "{{ expected }}" ]\' --retry 0', ctx).ok


@pytest.mark.parametrize("spec", ["", "--seconds 1 --cmd true", "--seconds -1", "--cmd true --retry -1"])
def test_wait_needs_exactly_one_valid_condition(spec: str) -> None:
    with pytest.raises(ComponentError, match="WAIT"):
        components.get("WAIT").parse(spec)
