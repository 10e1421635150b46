"""FILE: the native form of ansible.builtin.file, for a checked subset of its arguments.

A converter replaces an Ansible task by this verb only when the outcome is exactly the module's:
the same final file state, the same `changed` (first run and rerun) and the same failures.  So
`parse` accepts only what is implemented here (path, state file|directory|touch|absent|link,
octal mode, owner, group, src for links, check) and raises ComponentError naming the field for
anything else; the converter then keeps the Ansible module.  `execute` follows the module's
code paths (ansible-core 2.19/2.21 `modules/file.py` and `AnsibleModule`'s attribute setters),
including its less obvious choices:

- with `state` omitted, the state is what the path already is (a file, directory, link or hard
  link), and `file` when it does not exist;
- `file`, `directory` and `touch` follow a symlink at `path` (the module's `follow: true`);
- `directory` creates missing parents and gives every directory it creates the mode, owner and
  group, not only the last one;
- `touch` is always changed; `absent` removes whole trees, and a symlink rather than its target;
- `link` refuses a missing target (relative targets resolve from the link's directory) and a
  file or directory in the way (that needs `force`, outside the subset), and applies mode, owner
  and group to the link's target;
- in check mode nothing is written, and the result says what would change.

Everything the verb touches must be below `ctx.allowed_roots` (COPY's rule).  The helpers at the
end (argument checks, the attribute setters and the result's path info) are shared with WRITE.
"""

from __future__ import annotations

import argparse
import errno
import grp
import os
import posixpath
import pwd
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from accelerator.components.base import Component, ComponentError, ExecContext, Parsed
from accelerator.components.copy import _below_roots, _gid, _Refused, _uid
from accelerator.model import JobResult, JobState

STATES = ("file", "directory", "touch", "absent", "link")

# ansible.module_utils.parsing.convert_bool's spellings, as text (the map form arrives as text).
_TRUE = frozenset({"true", "yes", "on", "1", "y", "t"})
_FALSE = frozenset({"false", "no", "off", "0", "n", "f"})


class FileVerb(Component):
    """What FILE and WRITE share: typed map fields, the failure shape, the allowed-roots check."""

    # How a map value of each field is checked and turned into text; others must be strings.
    field_kinds: ClassVar[dict[str, str]] = {"mode": "mode", "owner": "id", "group": "id", "check": "bool"}

    def argv_from_map(self, spec: dict[str, Any]) -> list[str]:
        """Map form -> ["--field=value", ...], keeping what the YAML types mean.

        A YAML integer mode (0644 read as 420) is the mode itself, while a string is octal text,
        as in Ansible; values are joined to their flag with '=' so content starting with '-'
        stays a value; a null value counts as not given (Ansible's reading too).
        """
        options = {a.dest: a for a in self.parser()._actions if a.option_strings}
        argv: list[str] = []
        for key, value in spec.items():
            field = str(key).replace("-", "_")
            action = options.get(field)
            if action is None:
                raise ComponentError(f"{self.verb}: unknown field {key!r}")
            if value is None:
                continue
            argv.append(f"{action.option_strings[0]}={self._field_text(field, value)}")
        return argv

    def _field_text(self, field: str, value: Any) -> str:
        kind = self.field_kinds.get(field, "str")
        if kind == "bool" and isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, bool):
            raise ComponentError(f"{self.verb}: {field} must not be a boolean, got {value!r}")
        if kind == "mode" and isinstance(value, int):
            if value < 0:
                raise ComponentError(f"{self.verb}: mode {value} is out of range (0000-7777)")
            return f"0o{value:o}"  # an integer is the mode itself, whatever base YAML read it in
        if kind in ("id", "bool") and isinstance(value, int):
            return str(value)
        if not isinstance(value, str):
            raise ComponentError(f"{self.verb}: {field} must be a string, got {type(value).__name__} {value!r}")
        return value

    def failed(self, message: str, path: str, started: float) -> JobResult:
        if path not in message:
            message = f"{message} (path: {path})"
        error = f"{self.verb}: {message}"
        return JobResult(
            state=JobState.FAILED, changed=False, stderr=error, error=error, started=started,
            ended=time.time(), data={"failed": True, "msg": message, "path": path},
        )

    def succeeded(self, data: dict[str, Any], started: float) -> JobResult:
        return JobResult(
            state=JobState.SUCCESS, rc=0, changed=bool(data["changed"]), started=started,
            ended=time.time(), data=data,
        )


class File(FileVerb):
    verb = "FILE"
    help = "Set a path's state (file, directory, touch, absent, link), mode and owner, as ansible.builtin.file does."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--path", required=True, help="absolute path to manage")
        parser.add_argument("--state", choices=STATES, help="default: what the path already is, else file")
        parser.add_argument("--mode", help="octal mode, e.g. 0644")
        parser.add_argument("--owner", help="user name or id")
        parser.add_argument("--group", help="group name or id")
        parser.add_argument("--src", help="the link target (state=link), relative to the link's directory or absolute")
        parser.add_argument("--check", nargs="?", const="true", default="false", help="check mode: change nothing")

    def finish(self, args: dict[str, Any], base_dir: Path) -> Parsed:
        state = args["state"]
        src = args["src"]
        if state == "link":
            if src is None:
                raise ComponentError(f"{self.verb}: state=link requires src (the link target)")
            src = checked_link_target(src, self.verb)
        elif src is not None:
            raise ComponentError(f"{self.verb}: src is only supported with state=link, not state={state or '(omitted)'}")
        wire = {
            "path": checked_path(args["path"], self.verb, "path"),
            "state": state,
            "src": src,
            "mode": parse_mode(args["mode"], self.verb),
            "owner": checked_id(args["owner"], self.verb, "owner"),
            "group": checked_id(args["group"], self.verb, "group"),
            "check": parse_bool(args["check"], self.verb, "check"),
        }
        return Parsed(args=wire)

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        started = time.time()
        try:
            data = _FileRun(args, ctx.allowed_roots).run()
        except _Refused as exc:
            return self.failed(str(exc), args["path"], started)
        return self.succeeded(data, started)


class _FileRun:
    """One application of FILE, following ansible.builtin.file's functions of the same names."""

    def __init__(self, args: dict[str, Any], roots: tuple[Path, ...]) -> None:
        self.path: str = args["path"]
        self.state: str | None = args["state"]
        self.src: str | None = args["src"]
        self.check = bool(args["check"])
        self.attrs = Attrs(args["mode"], args["owner"], args["group"], self.check)
        self.roots = roots

    def run(self) -> dict[str, Any]:
        guard(self.path, self.roots, follow=False)
        prev = get_state(self.path)
        state = self.state or (prev if prev != "absent" else "file")
        if state in ("file", "directory", "touch"):
            guard(self.path, self.roots, follow=True)  # these act on what a symlink points to
        if state == "file":
            result = self.ensure_file()
        elif state == "directory":
            result = self.ensure_directory()
        elif state == "touch":
            result = self.touch()
        elif state == "absent":
            result = self.ensure_absent()
        elif state == "link":
            result = self.ensure_symlink()
        else:  # "hard": state omitted on a file with several links; only the attributes apply
            result = self.hard_link_attributes()
        return path_info(result)

    def _followed(self, path: str, prev: str) -> tuple[str, str]:
        if prev == "link":
            path = os.path.realpath(path)
            return path, get_state(path)
        return path, prev

    def ensure_file(self) -> dict[str, Any]:
        path, prev = self._followed(self.path, get_state(self.path))
        if prev not in ("file", "hard"):
            raise _Refused(f"file ({path}) is {prev}, cannot continue")
        return {"path": path, "changed": self.attrs.apply(path, False)}

    def ensure_directory(self) -> dict[str, Any]:
        path, prev = self._followed(self.path, get_state(self.path))
        if prev == "absent":
            if self.check:
                return {"path": path, "changed": True}
            return {"path": path, "changed": self._make_directories(path)}
        if prev != "directory":
            raise _Refused(f"{path} already exists as a {prev}")
        return {"path": path, "changed": self.attrs.apply(path, False)}

    def _make_directories(self, path: str) -> bool:
        """mkdir -p, giving each directory it creates the mode, owner and group (as the module does)."""
        changed = False
        current = ""
        try:
            for name in path.strip("/").split("/"):
                current = f"{current}/{name}"
                if os.path.exists(current):
                    continue
                try:
                    os.mkdir(current)
                    changed = True
                except OSError as exc:
                    if not (exc.errno == errno.EEXIST and os.path.isdir(current)):
                        raise
                changed = self.attrs.apply(current, changed)
        except OSError as exc:
            raise _Refused(f"There was an issue creating {current} as requested: {exc}") from None
        return changed

    def touch(self) -> dict[str, Any]:
        path = self.path
        prev = get_state(path)
        changed = False
        if prev == "absent":
            if self.check:
                return {"dest": path, "changed": True}
            try:
                open(path, "wb").close()
            except OSError as exc:
                raise _Refused(f"Error, could not touch target {path}: {exc}") from None
            changed = True
        target = os.path.realpath(path) if os.path.islink(path) else path
        try:
            changed = self.attrs.apply(target, changed)
            try:
                os.stat(target)
                if not self.check:
                    os.utime(target, None)
            except OSError as exc:
                raise _Refused(f"Error while updating modification or access time of {target}: {exc}") from None
        except _Refused:
            if prev == "absent":
                os.remove(path)  # the module removes the file it has just created
            raise
        return {"dest": path, "changed": True}

    def ensure_absent(self) -> dict[str, Any]:
        path = self.path
        prev = get_state(path)
        if prev == "absent":
            return {"path": path, "changed": False, "state": "absent"}
        if not self.check:
            if prev == "directory":
                try:
                    shutil.rmtree(path)
                except OSError as exc:
                    raise _Refused(f"rmtree failed on {path}: {exc}") from None
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise _Refused(f"Unlinking failed for {path}: {exc}") from None
        return {"path": path, "changed": True, "state": "absent"}

    def ensure_symlink(self) -> dict[str, Any]:
        path = self.path
        src = self.src
        prev = get_state(path)
        if src is None and os.path.exists(path):  # state omitted on a link: keep its target
            src = os.readlink(path)
        base = path if not os.path.islink(path) and os.path.isdir(path) else os.path.dirname(path)
        if src is not None and not os.path.exists(os.path.join(base, src)):
            absolute = os.path.join(base, src)
            raise _Refused(
                f"src file does not exist, use 'force=yes' if you really want to create the link: {absolute}"
            )
        if prev in ("directory", "file", "hard"):
            raise _Refused(f"refusing to convert from {prev} to symlink for {path}")
        changed = False
        if prev == "absent":
            if src is None:
                raise _Refused("src is required for creating new symlinks")
            changed = True
        elif src is not None and os.readlink(path) != src:
            changed = True
        if changed and not self.check:
            assert src is not None
            self._place_link(path, src, replace=prev != "absent")
        if self.check and not os.path.exists(path):
            return {"dest": path, "src": src, "changed": changed}
        target = os.path.realpath(path) if os.path.islink(path) else path
        if not (os.path.islink(path) and not os.path.exists(target)):
            if self.attrs.given:
                guard(target, self.roots, follow=False)
            changed = self.attrs.apply(target, changed)
        return {"dest": path, "src": src, "changed": changed}

    def _place_link(self, path: str, src: str, replace: bool) -> None:
        if not replace:
            try:
                os.symlink(src, path)
            except OSError as exc:
                raise _Refused(f"Error while linking {path}: {exc}") from None
            return
        temp = os.path.join(os.path.dirname(path), f".{os.getpid()}.{time.time()}.tmp")
        try:
            os.symlink(src, temp)
            os.rename(temp, path)
        except OSError as exc:
            if os.path.lexists(temp):
                os.unlink(temp)
            raise _Refused(f"Error while replacing {path}: {exc}") from None

    def hard_link_attributes(self) -> dict[str, Any]:
        return {"dest": self.path, "src": None, "changed": self.attrs.apply(self.path, False)}


# --- shared with WRITE: controller side ------------------------------------------------------


def checked_path(text: str, verb: str, field: str) -> str:
    """An absolute, normalised path the agent can use as it is (no ~, $VAR, '..' or '//')."""
    if not text.startswith("/"):
        raise ComponentError(f"{verb}: {field} must be an absolute path, got {text!r}")
    if "$" in text or "\0" in text:
        raise ComponentError(f"{verb}: {field} {text!r}: '$' (variable expansion) is not supported")
    if posixpath.normpath(text) != text or text.startswith("//"):
        raise ComponentError(
            f"{verb}: {field} {text!r} must be a normalised path (no '.', '..', '//' or trailing '/')"
        )
    return text


def checked_link_target(text: str, verb: str) -> str:
    if not text or "\0" in text:
        raise ComponentError(f"{verb}: src must be a non-empty path, got {text!r}")
    if text.startswith("~") or "$" in text:
        raise ComponentError(f"{verb}: src {text!r}: '~' and '$' expansion are not supported")
    return text


def parse_mode(text: str | None, verb: str) -> int | None:
    """Octal text ("0644", "644", "0o644"; an integer arrives as "0o..."), as Ansible reads it."""
    if text is None:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        raise ComponentError(
            f"{verb}: mode {text!r} is not an octal mode (symbolic modes such as u+x and 'preserve' are not supported)"
        ) from None
    if not 0 <= mode <= 0o7777:
        raise ComponentError(f"{verb}: mode {text!r} is out of range (0000-7777)")
    return mode


def checked_id(text: str | None, verb: str, field: str) -> str | None:
    """A user or group name, or a plain decimal id; other spellings Python's int() takes are refused."""
    if text is None:
        return None
    if text.isascii() and text.isdigit():
        return text
    try:
        int(text)
    except ValueError:
        if text and not text.isspace():
            return text
    raise ComponentError(f"{verb}: {field} must be a name or a decimal id, got {text!r}")


def parse_bool(text: str, verb: str, field: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ComponentError(f"{verb}: {field} must be a boolean (true/false, yes/no), got {text!r}")


# --- shared with WRITE: agent side -----------------------------------------------------------


def guard(path: str, roots: tuple[Path, ...], *, follow: bool) -> None:
    """Refuse a path not strictly below an allowed root; follow=False checks a link itself, not its target."""
    if follow:
        real = Path(os.path.realpath(path))
    else:
        parent, name = posixpath.split(path)
        real = Path(os.path.realpath(parent)) / name
    _below_roots(path, real, roots)


def get_state(path: str) -> str:
    """The module's reading of what a path is: absent, link, directory, hard (several links) or file."""
    try:
        if not os.path.lexists(path):
            return "absent"
        if os.path.islink(path):
            return "link"
        if os.path.isdir(path):
            return "directory"
        if os.stat(path).st_nlink > 1:
            return "hard"
        return "file"
    except FileNotFoundError:
        return "absent"


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise _Refused(f"cannot inspect {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Attrs:
    """Mode, owner and group as AnsibleModule.set_fs_attributes_if_different applies them."""

    mode: int | None
    owner: str | None
    group: str | None
    check: bool

    @property
    def given(self) -> bool:
        return self.mode is not None or self.owner is not None or self.group is not None

    def apply(self, path: str, changed: bool) -> bool:
        """Owner, then group, then mode (chown may clear set-id bits); True when something differed."""
        changed = self._owner(path, self.owner, changed, user=True)
        changed = self._owner(path, self.group, changed, user=False)
        return self._mode(path, changed)

    def _absent_in_check(self, path: str) -> bool:
        return self.check and not os.path.exists(path)

    def _owner(self, path: str, name: str | None, changed: bool, *, user: bool) -> bool:
        if name is None:
            return changed
        if self._absent_in_check(path):
            return True
        current = _lstat(path)
        wanted = _uid(name) if user else _gid(name)
        if (current.st_uid if user else current.st_gid) == wanted:
            return changed
        if self.check:
            return True
        try:
            os.lchown(path, wanted if user else -1, -1 if user else wanted)
        except OSError as exc:
            raise _Refused(f"{'chown' if user else 'chgrp'} failed on {path}: {exc}") from None
        return True

    def _mode(self, path: str, changed: bool) -> bool:
        if self.mode is None:
            return changed
        if self._absent_in_check(path):
            return True
        previous = stat.S_IMODE(_lstat(path).st_mode)
        if previous == self.mode:
            return changed
        if self.check:
            return True
        if os.path.islink(path):
            return changed  # Linux cannot chmod a link itself; the module reverts the target and moves on
        try:
            os.chmod(path, self.mode)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP):
                raise _Refused(f"chmod failed on {path}: {exc}") from None
        return changed or stat.S_IMODE(_lstat(path).st_mode) != previous


def path_info(result: dict[str, Any]) -> dict[str, Any]:
    """AnsibleModule.add_path_info: owner, mode, state and size of `path` (or `dest`) when it exists."""
    path = result.get("path", result.get("dest"))
    if path is None or not os.path.exists(path):
        return result
    info = os.lstat(path)
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    if os.path.islink(path):
        state = "link"
    elif os.path.isdir(path):
        state = "directory"
    elif os.stat(path).st_nlink > 1:
        state = "hard"
    else:
        state = "file"
    result.update(
        uid=info.st_uid, gid=info.st_gid, owner=owner, group=group,
        mode="0%03o" % stat.S_IMODE(info.st_mode), state=state, size=info.st_size,
    )
    return result
