"""COPY and ADD: ship a local file or directory to each agent and write it below an allowed root.

The controller hashes the sources and lists them as uploads; the agent fetches each blob,
optionally renders it (Directord's "blueprint"), and writes it atomically.  Every destination is
checked against `ctx.allowed_roots` after resolving '..' and symlinks, before anything is
written, so one bad path in a directory copy leaves the target untouched.  A file whose content,
mode and owner already match is not rewritten, which keeps reruns quiet (`changed` False).
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import os
import posixpath
import pwd
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from accelerator.blobs import sha256_of
from accelerator.components.base import Component, ComponentError, ExecContext, Parsed
from accelerator.model import JobResult, JobState

_BLOCK = 1 << 20
_KEEP = -1  # os.chown's "leave this id as it is"


class _Refused(Exception):
    """An expected agent-side failure (bad destination, unknown owner, I/O); becomes a FAILED result."""


@dataclass(frozen=True, slots=True)
class _Planned:
    """One file ready to be written: where, what (a blob or rendered bytes), and how."""

    target: Path
    sha256: str
    size: int
    mode: int
    blob: Path
    rendered: bytes | None  # set when blueprinted; the blob is then only the template


class Copy(Component):
    verb = "COPY"
    help = "Copy a local file or directory (relative to the orchestration) to each target."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--chmod", metavar="MODE", help="octal mode of the written files (default: the source's)")
        parser.add_argument("--chown", metavar="USER[:GROUP]", help="owner of the written files, by name or id")
        parser.add_argument("--blueprint", action="store_true", help="render {{ variables }} in the content")
        parser.add_argument("src", help="local file or directory")
        parser.add_argument("dest", help="target path; a trailing '/' or an existing directory receives SRC inside")

    def finish(self, args: dict[str, Any], base_dir: Path) -> Parsed:
        source = base_dir / args["src"]
        files = _source_files(source, self.verb)
        dest = args["dest"]
        if source.is_dir() and not dest.endswith("/"):
            dest += "/"  # a directory's files always land inside DEST, at their relative paths
        entries = [_describe(path, relative, dest) for path, relative in files]
        user, group = _parse_owner(args["chown"], self.verb)
        wire = {
            "files": entries,
            "chmod": _parse_mode(args["chmod"], self.verb),
            "user": user,
            "group": group,
            "blueprint": bool(args["blueprint"]),
        }
        return Parsed(args=wire, uploads={entry["sha256"]: path for entry, (path, _) in zip(entries, files)})

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        done: list[dict[str, Any]] = []
        try:
            uid, gid = _uid(args.get("user")), _gid(args.get("group"))
            plan = [self._plan(entry, args, ctx) for entry in args["files"]]
            for item in plan:
                changed = _install(item, uid, gid)
                done.append({"dest": str(item.target), "sha256": item.sha256, "changed": changed})
        except _Refused as exc:
            return self._failed(f"{self.verb}: {exc}", done, started)
        return JobResult(
            state=JobState.SUCCESS, rc=0, changed=any(f["changed"] for f in done),
            started=started, ended=time.time(), data={"files": done},
        )

    def _plan(self, entry: dict[str, Any], args: dict[str, Any], ctx: ExecContext) -> _Planned:
        """Resolve and check the destination, then fetch (and maybe render) the content."""
        target = _checked_target(_render(ctx, entry["dest"]), entry["path"], ctx.allowed_roots)
        try:
            blob = ctx.fetch_blob(entry["sha256"])
        except (OSError, ValueError) as exc:
            raise _Refused(f"cannot fetch the content of {entry['path']} ({entry['sha256']}): {exc}") from None
        mode = args["chmod"] if args.get("chmod") is not None else entry["mode"]
        if not args.get("blueprint"):
            return _Planned(target, entry["sha256"], entry["size"], mode, blob, None)
        rendered = _render(ctx, _read_text(blob, entry["path"])).encode("utf-8")
        return _Planned(target, hashlib.sha256(rendered).hexdigest(), len(rendered), mode, blob, rendered)

    def _failed(self, error: str, done: list[dict[str, Any]], started: float) -> JobResult:
        return JobResult(
            state=JobState.FAILED, changed=any(f["changed"] for f in done), stderr=error, error=error,
            started=started, ended=time.time(), data={"files": done},
        )


class Add(Copy):
    """Directord spells the same verb both ways; ADD is kept so its orchestrations run unchanged."""

    verb = "ADD"


# --- controller side -------------------------------------------------------------------------


def _source_files(source: Path, verb: str) -> list[tuple[Path, str]]:
    """(local path, path relative to what DEST receives) for every file SRC stands for."""
    if source.is_file():
        return [(source, source.name)]
    if not source.is_dir():
        raise ComponentError(f"{verb}: source {source} does not exist")
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if not files:
        raise ComponentError(f"{verb}: source directory {source} contains no files")
    return [(p, p.relative_to(source).as_posix()) for p in files]


def _describe(path: Path, relative: str, dest: str) -> dict[str, Any]:
    info = path.stat()
    return {
        "sha256": sha256_of(path),
        "size": info.st_size,
        "mode": stat.S_IMODE(info.st_mode),
        "path": relative,
        "dest": dest,
    }


def _parse_mode(text: str | None, verb: str) -> int | None:
    if text is None:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        raise ComponentError(f"{verb}: --chmod expects an octal mode like 0644, got {text!r}") from None
    if not 0 <= mode <= 0o7777:
        raise ComponentError(f"{verb}: --chmod {text!r} is out of range (0000-7777)")
    return mode


def _parse_owner(text: str | None, verb: str) -> tuple[str | None, str | None]:
    """USER[:GROUP] -> (user, group).  Names are looked up on the agent, where they must exist."""
    if text is None:
        return None, None
    user, sep, group = text.partition(":")
    if not user or (sep and not group):
        raise ComponentError(f"{verb}: --chown expects USER or USER:GROUP, got {text!r}")
    return user, group or None


# --- agent side ------------------------------------------------------------------------------


def _render(ctx: ExecContext, text: str) -> str:
    try:
        return ctx.render(text)
    except ComponentError as exc:
        raise _Refused(str(exc)) from None


def _read_text(blob: Path, relative: str) -> str:
    try:
        return blob.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _Refused(f"--blueprint needs UTF-8 text, and {relative} is not") from None
    except OSError as exc:
        raise _Refused(f"cannot read the template {relative}: {exc}") from None


def _checked_target(dest: str, relative: str, roots: tuple[Path, ...]) -> Path:
    """The real path to write, refusing anything that is not strictly below an allowed root."""
    if not os.path.isabs(dest):
        raise _Refused(f"destination {dest!r} must be an absolute path")
    if dest.endswith("/") or os.path.isdir(dest):
        dest = posixpath.join(dest, relative)
    return _below_roots(dest, Path(os.path.realpath(dest)), roots)


def _below_roots(dest: str, real: Path, roots: tuple[Path, ...]) -> Path:
    """`real` (what `dest` resolves to) if it is strictly below an allowed root, else _Refused."""
    real_roots = [Path(os.path.realpath(root)) for root in roots]
    if not any(real != root and real.is_relative_to(root) for root in real_roots):
        allowed = ", ".join(str(root) for root in real_roots) or "none configured"
        raise _Refused(f"refusing to write {dest} (resolves to {real}): not below an allowed root ({allowed})")
    return real


def _uid(user: str | None) -> int:
    if user is None:
        return _KEEP
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise _Refused(f"unknown user {user!r} on this host") from None


def _gid(group: str | None) -> int:
    if group is None:
        return _KEEP
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise _Refused(f"unknown group {group!r} on this host") from None


def _install(item: _Planned, uid: int, gid: int) -> bool:
    """Make item.target match; True when something had to change."""
    try:
        current = item.target.lstat()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise _Refused(f"cannot inspect {item.target}: {exc}") from None
    try:
        if current is not None and _same_content(item, current):
            return _fix_metadata(item, current, uid, gid)
        _write_atomically(item, uid, gid)
    except OSError as exc:
        raise _Refused(f"cannot write {item.target}: {exc}") from None
    return True


def _same_content(item: _Planned, current: os.stat_result) -> bool:
    """Cheap size test first; hash only when the size matches."""
    return (
        stat.S_ISREG(current.st_mode)
        and current.st_size == item.size
        and sha256_of(item.target) == item.sha256
    )


def _fix_metadata(item: _Planned, current: os.stat_result, uid: int, gid: int) -> bool:
    """Same bytes already there: adjust owner and mode in place, keeping the file (and its mtime)."""
    wrong_owner = (uid != _KEEP and current.st_uid != uid) or (gid != _KEEP and current.st_gid != gid)
    wrong_mode = stat.S_IMODE(current.st_mode) != item.mode
    if wrong_owner:
        os.chown(item.target, uid, gid)
    if wrong_owner or wrong_mode:
        os.chmod(item.target, item.mode)  # after chown, which may clear set-id bits
    return wrong_owner or wrong_mode


def _write_atomically(item: _Planned, uid: int, gid: int) -> None:
    """Temp file beside the target, fsync, owner and mode, then rename: readers never see half a file."""
    parent = item.target.parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=parent, prefix=f".{item.target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            _write_content(item, out)
            out.flush()
            os.fsync(out.fileno())
            os.fchown(out.fileno(), uid, gid)
            os.fchmod(out.fileno(), item.mode)
        os.replace(temp, item.target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_directory(parent)


def _write_content(item: _Planned, out: IO[bytes]) -> None:
    """Write the rendered bytes, or stream the blob while hashing it to prove what landed."""
    if item.rendered is not None:
        out.write(item.rendered)
        return
    digest = hashlib.sha256()
    with item.blob.open("rb") as source:
        for block in iter(lambda: source.read(_BLOCK), b""):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != item.sha256:
        raise _Refused(f"content of {item.target} does not match sha256 {item.sha256}; not written")


def _fsync_directory(path: Path) -> None:
    """Make the rename itself durable, not only the file's bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
