"""WRITE: the native form of the write step of ansible.builtin.copy and ansible.builtin.template.

The controller hands over the final text: `content` inline in the job's arguments (a template is
rendered by the controller first; a non-string content is written as the copy action writes it,
JSON for a dict or list and str() otherwise), or `src`, a local file or directory whose files are
uploaded as blobs like COPY's.  The agent then does what the copy action plugin and the copy/file
modules do together (ansible-core 2.19/2.21), so that the converter may swap one for the other.

For each file (the action's _copy_file):

- an existing directory at the file's destination receives `dest/basename(src)`; with `content` it
  is a failure ("can not use content with a dir as dest"), as it is with a trailing '/' (refused
  by parse);
- an existing destination is left alone when `force` is false, mode and owner included;
- the content is compared by SHA-1: when equal, only mode, owner and group are applied (the file
  module's path, which also keeps a hard-linked file's other names, and never runs `validate`);
  when different, `validate` (if given) runs on the new content in a temporary file, and the file
  is replaced atomically, keeping the old file's mode and owner, or, for a new file, with mode
  0666 & ~umask and the directory's group when the directory is set-group-ID; then mode, owner
  and group are applied.  A symlink at `dest` is replaced by a regular file (copy's follow=no);
- a missing parent directory fails ("Destination directory ... does not exist"), except in check
  mode, where the plugin reports "changed" before it would look, and when the destination is a
  directory (a directory source, or `dest` written with a trailing '/'): missing directories on
  the way are then created and get `directory_mode`, owner and group.

A directory `src` is walked on the controller as the action walks it (symlinks followed): with a
trailing '/' its contents go into `dest`, without it the directory itself.  After the files, the
file module (state=directory, mode=directory_mode, owner, group) runs on each source directory
that no copied file is in; the 2.19 action (before ansible#85834) runs it on every source
directory, so existing ones get directory_mode too.  Which of the two the controller's action
does is read from its ansible-core when the job is parsed (`every_directory`).

The result is the action's: for one source file, the module's (dest, checksum (SHA-1), md5sum and
src after a write; path, dest and checksum when only attributes were looked at; only changed in
check mode when the content differs), or, with a directory source of one file, the last module
the action ran; otherwise {dest, src, changed} (dest with a trailing '/' for a directory source,
src the controller's path), as when force=false kept the only file.

Outside that subset (mode=preserve, backup, symlinks the walk cannot follow, a symlink to a
directory at `dest` together with `content`, ...) parse or execute refuses, naming the field or
the path.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from accelerator.blobs import sha256_of
from accelerator.components.base import ComponentError, ExecContext, Parsed
from accelerator.components.copy import _BLOCK, _Planned, _Refused, _gid, _uid, _write_atomically
from accelerator.components.file import (
    Attrs,
    FileVerb,
    _FileRun,
    checked_id,
    checked_path,
    get_state,
    guard,
    parse_bool,
    parse_mode,
    path_info,
)
from accelerator.model import JobResult


class Write(FileVerb):
    verb = "WRITE"
    help = "Write a file or a directory's files from inline content or local files, as ansible.builtin.copy does."

    field_kinds: ClassVar[dict[str, str]] = {**FileVerb.field_kinds, "force": "bool", "directory_mode": "mode"}

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dest", required=True,
                            help="absolute path of the file (an existing directory, or a trailing '/', receives SRC's name)")
        parser.add_argument("--content", help="the text to write")
        parser.add_argument("--src", help="local file or directory, relative to the orchestration; "
                                          "a directory with a trailing '/' copies its contents")
        parser.add_argument("--mode", help="octal mode of the files, e.g. 0644 (default: kept, or 0666 & ~umask for a new file)")
        parser.add_argument("--directory-mode", help="octal mode of the directories the copy creates")
        parser.add_argument("--owner", help="user name or id")
        parser.add_argument("--group", help="group name or id")
        parser.add_argument("--force", nargs="?", const="true", default="true", help="false: never replace an existing file")
        parser.add_argument("--validate", help="command checking the new content before it replaces a file; %%s is the file")
        parser.add_argument("--check", nargs="?", const="true", default="false", help="check mode: change nothing")

    def _field_text(self, field: str, value: Any) -> str:
        if field == "content" and not isinstance(value, str):
            return content_text(value, self.verb)
        return super()._field_text(field, value)

    def finish(self, args: dict[str, Any], base_dir: Path) -> Parsed:
        content, src, dest = args["content"], args["src"], args["dest"]
        if (content is None) == (src is None):
            raise ComponentError(f"{self.verb}: exactly one of content or src is required")
        if src == "":
            raise ComponentError(f"{self.verb}: src must not be empty (the copy action: src (or content) is required)")
        slash = dest.endswith("/") and dest != "/"
        if slash and content is not None:
            raise ComponentError(f"{self.verb}: dest {dest!r}: can not use content with a dir as dest")
        wire: dict[str, Any] = {
            "dest": checked_path(dest[:-1] if slash else dest, self.verb, "dest"),
            "slash": slash,
            "content": content,
            "src": src,
            "source": None,
            "files": None,
            "directories": [],
            "mode": parse_mode(args["mode"], self.verb),
            "directory_mode": parse_mode(args["directory_mode"], self.verb),
            "owner": checked_id(args["owner"], self.verb, "owner"),
            "group": checked_id(args["group"], self.verb, "group"),
            "force": parse_bool(args["force"], self.verb, "force"),
            "validate": args["validate"],
            "check": parse_bool(args["check"], self.verb, "check"),
            "every_directory": False,
        }
        uploads: dict[str, Path] = {}
        if src is not None:
            # The action's path: absolute, with the trailing '/' as given (it says which level is copied).
            source = os.path.join(os.path.abspath(base_dir), src)
            wire["source"] = source
            if os.path.isdir(source):
                files, directories = walk_source(source, self.verb)
                wire.update(slash=True, directories=directories, every_directory=action_copies_every_directory())
            elif os.path.isfile(source) and not src.endswith("/"):
                files = [(Path(source), os.path.basename(source))]
            else:
                raise ComponentError(f"{self.verb}: src {src!r} is not a file or a directory ({source})")
            wire["files"] = [_describe(path, relative) for path, relative in files]
            uploads = {entry["sha256"]: path for entry, (path, _) in zip(wire["files"], files)}
        else:
            try:
                content.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ComponentError(f"{self.verb}: content cannot be encoded as UTF-8: {exc}") from None
        return Parsed(args=wire, uploads=uploads)

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        try:
            data = _WriteRun(args, ctx).run()
        except _Refused as exc:
            result = self.failed(str(exc), args["dest"], started)
            result.data.update(getattr(exc, "data", {}))
            return result
        return self.succeeded(data, started)


# --- controller side -------------------------------------------------------------------------


def content_text(value: Any, verb: str) -> str:
    """A non-string content as the copy action writes it: JSON for a dict or a list, else str()."""
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ComponentError(f"{verb}: content cannot be written as JSON: {exc}") from None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ComponentError(f"{verb}: content is bytes that are not UTF-8") from None
    return str(value)


def walk_source(top: str, verb: str) -> tuple[list[tuple[Path, str]], list[str]]:
    """The copy action's _walk_dirs (local_follow=True): (file, relative path) and directory paths.

    Paths are relative to what `dest` receives: the directory's contents with a trailing '/',
    the directory itself otherwise.  The order is os.walk's, names sorted at each level (Ansible's
    is the file system's): a level's files, then its subdirectories (one reached through a symlink
    is walked right there), then the levels below.  What the action would copy as a symlink (a
    dangling link, or one to a directory the walk is inside) and special files are refused.
    """
    files: list[tuple[Path, str]] = []
    directories: list[str] = []
    top_rel = "" if top.endswith("/") else os.path.basename(top)
    if top_rel in (".", ".."):
        raise ComponentError(f"{verb}: src {top!r}: name the directory itself, not '.' or '..'")

    def identity(path: str) -> tuple[int, int]:
        info = os.stat(path)
        return info.st_dev, info.st_ino

    def level(directory: str, rel: str, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            raise ComponentError(f"{verb}: cannot read the source directory {directory}: {exc}") from None
        subdirectories = [entry for entry in entries if entry.is_dir()]
        for entry in entries:
            if entry.is_dir():
                continue
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if not os.path.isfile(real):
                    raise ComponentError(f"{verb}: src {entry.path} is a symlink to no file; it cannot be followed")
                files.append((Path(real), os.path.join(rel, entry.name)))
            elif entry.is_file(follow_symlinks=False):
                files.append((Path(entry.path), os.path.join(rel, entry.name)))
            else:
                raise ComponentError(f"{verb}: src {entry.path} is not a regular file")
        for entry in subdirectories:
            directories.append(os.path.join(rel, entry.name))
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if identity(real) in ancestors:
                    raise ComponentError(f"{verb}: src {entry.path} is a symlink to a directory it is in")
                level(real, os.path.join(rel, entry.name), ancestors | {identity(real)})
        for entry in subdirectories:
            if not entry.is_symlink():
                level(entry.path, os.path.join(rel, entry.name), ancestors | {identity(entry.path)})

    level(top, top_rel, frozenset({identity(top)}))
    return files, directories


def _describe(path: Path, relative: str) -> dict[str, Any]:
    info = path.stat()
    return {"path": relative, "sha256": sha256_of(path), "size": info.st_size, "mode": stat.S_IMODE(info.st_mode)}


@functools.cache
def action_copies_every_directory() -> bool:
    """True when the controller's copy action runs the file module on every source directory.

    Before ansible#85834 (in 2.19; fixed in 2.21.0 and backported to 2.20) the action meant to skip
    directories that received a file but never recorded them.  Its source is read rather than its
    version compared, since the fix came in a 2.20 patch release; without ansible-core the fixed
    behaviour is assumed.
    """
    try:
        spec = importlib.util.find_spec("ansible")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        text = (Path(locations[0]) / "plugins" / "action" / "copy.py").read_text(encoding="utf-8")
    except (ImportError, IndexError, OSError, ValueError):
        return False
    return "implicit_directories.add(dir_path)" in text


# --- agent side ------------------------------------------------------------------------------


class _Failed(_Refused):
    """A failure whose result carries more of the module's keys (validate's exit status and output)."""

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.data = data


@dataclass(frozen=True, slots=True)
class _Payload:
    """The bytes to write (inline) or the verified blob holding them, with the digests Ansible reports."""

    sha1: str
    md5: str | None
    sha256: str
    size: int
    data: bytes | None
    blob: Path | None


def _inline_payload(content: str) -> _Payload:
    data = content.encode("utf-8")
    md5 = _md5()
    if md5 is not None:
        md5.update(data)
    return _Payload(
        hashlib.sha1(data).hexdigest(), md5.hexdigest() if md5 else None, hashlib.sha256(data).hexdigest(),
        len(data), data, None,
    )


def _blob_payload(entry: dict[str, Any], ctx: ExecContext) -> _Payload:
    try:
        blob = ctx.fetch_blob(entry["sha256"])
    except (OSError, ValueError) as exc:
        raise _Refused(f"cannot fetch the content of {entry['path']} ({entry['sha256']}): {exc}") from None
    sha1, md5 = hashlib.sha1(), _md5()
    size = 0
    try:
        with blob.open("rb") as source:
            for block in iter(lambda: source.read(_BLOCK), b""):
                sha1.update(block)
                size += len(block)
                if md5 is not None:
                    md5.update(block)
    except OSError as exc:
        raise _Refused(f"cannot read the content of {entry['path']}: {exc}") from None
    return _Payload(sha1.hexdigest(), md5.hexdigest() if md5 else None, entry["sha256"], size, None, blob)


def _md5() -> Any:
    """A fresh md5 hash, or None where FIPS forbids md5 (the module then reports md5sum None)."""
    try:
        return hashlib.md5(usedforsecurity=False)
    except ValueError:
        return None


def _sha1_of(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Refused(f"cannot inspect {path}: {exc}") from None


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with other job threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _split_pre_existing_dir(dirname: str) -> tuple[str, list[str]]:
    """The copy module's split_pre_existing_dir: the first existing ancestor and the names below it."""
    head, tail = os.path.split(dirname)
    if head == "":
        return ".", [tail]
    if os.path.exists(head):
        return head, [tail]
    if head == "/":
        raise _Refused("The '/' directory doesn't exist on this machine.")
    pre_existing, names = _split_pre_existing_dir(head)
    return pre_existing, [*names, tail]


class _WriteRun:
    """One application of WRITE: the copy action plugin's run, then the copy or file module per file."""

    def __init__(self, args: dict[str, Any], ctx: ExecContext) -> None:
        self.args = args
        self.ctx = ctx
        self.roots = ctx.allowed_roots
        self.dest: str = args["dest"]
        self.slash = bool(args.get("slash"))
        self.content: str | None = args["content"]
        self.source: str | None = args.get("source")
        self.files: list[dict[str, Any]] | None = args.get("files")
        self.directories: list[str] = list(args.get("directories") or [])
        self.every_directory = bool(args.get("every_directory"))
        self.force = bool(args["force"])
        self.check = bool(args["check"])
        self.validate: str | None = args.get("validate")
        self.attrs = Attrs(args["mode"], args["owner"], args["group"], self.check)
        self.directory_attrs = Attrs(args.get("directory_mode"), args["owner"], args["group"], self.check)

    def run(self) -> dict[str, Any]:
        guard(self.dest, self.roots, follow=False)
        dest = self.dest + "/" if self.slash else self.dest
        if self.files is None:
            assert self.content is not None
            work: list[tuple[str | None, _Payload]] = [(None, _inline_payload(self.content))]
        else:  # every blob first: a missing one fails the job before anything is written
            work = [(entry["path"], _blob_payload(entry, self.ctx)) for entry in self.files]
        changed = executed = False
        last: dict[str, Any] = {}
        implicit: set[str] = set()
        for relative, payload in work:
            returned = self.copy_file(dest, relative, payload)
            if returned is None:  # force=false kept an existing file
                continue
            while relative and (relative := os.path.dirname(relative)):
                implicit.add(relative)
            executed, last = True, returned
            changed = changed or bool(returned.get("changed"))
        for relative in self.directories:
            if relative in implicit and not self.every_directory:
                continue
            last = self.directory(os.path.join(dest, relative))
            executed = True
            changed = changed or bool(last["changed"])
        if executed and len(work) == 1:  # the last module's result, not the files' changed
            result = dict(last)
            if "path" in result and "dest" not in result:
                result["dest"] = result["path"]
            return result
        result = {"dest": dest, "changed": changed}
        if self.source is not None:
            result["src"] = self.source
        return result

    def copy_file(self, dest: str, relative: str | None, payload: _Payload) -> dict[str, Any] | None:
        """The action's _copy_file for one file: None when force=false keeps it, else the module's result."""
        if dest.endswith("/"):
            assert relative is not None
            dest_file = os.path.join(dest, relative)
            guard(dest_file, self.roots, follow=False)
        else:
            dest_file = dest
        current = _lstat_or_none(dest_file)
        if current is not None and stat.S_ISDIR(current.st_mode):
            if self.content is not None:
                raise _Refused(f"can not use content with a dir as dest ({dest})")
            assert relative is not None
            dest_file = os.path.join(dest, relative)
            guard(dest_file, self.roots, follow=False)
            current = _lstat_or_none(dest_file)
        if current is not None and not self.force:
            return None
        on_disk = None
        if current is not None and stat.S_ISREG(current.st_mode) and os.access(dest_file, os.R_OK):
            on_disk = self._sha1(dest_file)
        if payload.sha1 != on_disk:
            if self.check:
                return {"changed": True}
            return self.copy_module(dest, relative, payload, dest_file)
        return self.file_module(dest, relative, payload)

    def _with_src(self, result: dict[str, Any]) -> dict[str, Any]:
        if self.source is not None:
            result["src"] = self.source
        return result

    def _sha1(self, path: str) -> str:
        try:
            return _sha1_of(path)
        except OSError as exc:
            raise _Refused(f"cannot read {path}: {exc}") from None

    def copy_module(self, dest: str, relative: str | None, payload: _Payload, dest_file: str) -> dict[str, Any]:
        """ansible.builtin.copy (the module) for one file, follow=no: write unless the bytes match."""
        changed = False
        if dest.endswith("/"):  # a directory destination: create what is missing on the way
            assert relative is not None
            dest = os.path.join(dest, relative)
            parent = os.path.dirname(dest)
            if not os.path.exists(parent):
                self._make_directories(parent)
                changed = True
        if os.path.isdir(dest):  # a directory, or a link to one, receives the file under src's name
            if self.content is None:
                assert relative is not None
                dest = os.path.join(dest, relative)
            else:  # (content and a real directory failed in copy_file) Ansible would name it after its temp file
                raise _Refused(f"{dest} is a symlink to a directory; content cannot be written there")
            guard(dest, self.roots, follow=False)
        parent = os.path.dirname(dest)
        on_disk = None
        if os.path.exists(dest):
            if os.access(dest, os.R_OK) and os.path.isfile(dest):
                on_disk = self._sha1(dest)
        elif not os.path.exists(parent):
            raise _Refused(f"Destination directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise _Refused(f"Destination {parent} not writable")
        if payload.sha1 != on_disk or os.path.islink(dest):
            try:
                if os.path.islink(dest):  # the module swaps the link for an empty file, then writes over it
                    os.unlink(dest)
                    open(dest, "w").close()
            except OSError as exc:
                raise _Refused(f"Failed to write {dest}: {exc}") from None
            if self.validate is not None:
                self._validate(payload, os.path.splitext(dest_file)[1])
            try:
                self._write(dest, payload)
            except OSError as exc:
                raise _Refused(f"Failed to write {dest}: {exc}") from None
            changed = True
        changed = self.attrs.apply(dest, changed)
        result = {"dest": dest, "md5sum": payload.md5, "checksum": payload.sha1, "changed": changed}
        return path_info(self._with_src(result))

    def _make_directories(self, dirname: str) -> None:
        """os.makedirs, then directory_mode, owner and group on each directory made (the module's way)."""
        pre_existing, names = _split_pre_existing_dir(dirname)
        try:
            os.makedirs(dirname)
        except OSError as exc:
            raise _Refused(f"cannot create the directory {dirname}: {exc}") from None
        path = pre_existing
        for name in names:
            path = os.path.join(path, name)
            self.directory_attrs.apply(path, True)

    def _validate(self, payload: _Payload, suffix: str) -> None:
        """The module's validate: the new content in a temporary file (dest's suffix kept), with the mode,
        owner and group it will get, checked by the command run without a shell."""
        validate = self.validate
        assert validate is not None
        workdir = tempfile.mkdtemp(prefix="write-validate-")
        try:
            candidate = os.path.join(workdir, ".source" + suffix)
            try:
                with open(candidate, "wb") as out:
                    if payload.data is not None:
                        out.write(payload.data)
                    else:
                        assert payload.blob is not None
                        with payload.blob.open("rb") as source:
                            shutil.copyfileobj(source, out, _BLOCK)
                os.chmod(candidate, 0o666 & ~_umask())
            except OSError as exc:
                raise _Refused(f"cannot prepare the file to validate: {exc}") from None
            self.attrs._mode(candidate, False)  # mode first, then owner and group, as the module does
            self.attrs._owner(candidate, self.attrs.owner, False, user=True)
            self.attrs._owner(candidate, self.attrs.group, False, user=False)
            if "%s" not in validate:
                raise _Refused(f"validate must contain %s: {validate}")
            try:
                argv = [os.path.expanduser(os.path.expandvars(word)) for word in shlex.split(validate % candidate)]
            except (TypeError, ValueError) as exc:
                raise _Refused(f"validate {validate!r} cannot be run: {exc}") from None
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, close_fds=True, check=False)
            except (OSError, ValueError, IndexError) as exc:
                raise _Failed("Error executing command.", rc=getattr(exc, "errno", None) or 257,
                              stdout="", stderr="", cmd=" ".join(argv)) from None
            if proc.returncode != 0:
                raise _Failed(
                    "failed to validate", exit_status=proc.returncode,
                    stdout=proc.stdout.decode("utf-8", "surrogateescape"),
                    stderr=proc.stderr.decode("utf-8", "surrogateescape"),
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _write(self, dest: str, payload: _Payload) -> None:
        """AnsibleModule.atomic_move's outcome: an existing file's mode and owner are kept; a new one
        gets 0666 & ~umask, this user, and the directory's group if the directory is set-group-ID.

        The requested mode and owner are already given to the temporary file (the result is the
        same, and the new file is never visible with looser permissions); apply() then finds
        nothing left to do, or reports the unknown user or group as the module would.
        """
        if os.path.exists(dest):
            info = os.stat(dest)
            uid, gid, mode = info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)
        else:
            directory = os.stat(os.path.dirname(dest))
            uid, mode = os.geteuid(), 0o666 & ~_umask()
            gid = directory.st_gid if directory.st_mode & stat.S_ISGID else os.getegid()
        try:  # the module sets owner, group, mode in turn and stops at a name it cannot look up
            uid = uid if self.attrs.owner is None else _uid(self.attrs.owner)
            gid = gid if self.attrs.group is None else _gid(self.attrs.group)
            mode = mode if self.attrs.mode is None else self.attrs.mode
        except _Refused:
            pass  # apply() then reports the name after the write, as the module does
        item = _Planned(
            target=Path(dest), sha256=payload.sha256, size=payload.size, mode=mode,
            blob=payload.blob or Path(os.devnull), rendered=payload.data,
        )
        _write_atomically(item, uid, gid)

    def file_module(self, dest: str, relative: str | None, payload: _Payload) -> dict[str, Any]:
        """ansible.builtin.file with state=file: the bytes already match, only attributes may change."""
        path = dest
        if os.path.isdir(path):
            assert relative is not None
            path = os.path.join(path, relative)
        prev = get_state(path)
        if prev == "link":
            path = os.path.realpath(path)
            prev = get_state(path)
        if prev not in ("file", "hard"):
            raise _Refused(f"file ({path}) is {prev}, cannot continue")
        changed = self.attrs.apply(path, False)
        return path_info({"path": path, "dest": path, "changed": changed, "checksum": payload.sha1})

    def directory(self, path: str) -> dict[str, Any]:
        """ansible.builtin.file with state=directory and mode=directory_mode, as the action runs it."""
        args = {
            "path": path, "state": "directory", "src": None, "mode": self.args.get("directory_mode"),
            "owner": self.args["owner"], "group": self.args["group"], "check": self.check,
        }
        return _FileRun(args, self.roots).run()
