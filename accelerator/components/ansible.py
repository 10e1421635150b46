"""ANSIBLE: run an Ansible module on the agent from the AnsiballZ payload the controller built.

Targets need no Ansible install: the controller builds the payload (the module and its
module_utils in a zip), uploads the zip once under its sha256, and each job carries only that
hash and the module's arguments.  The agent runs the module in a child of its warm zygote
(accelerator.zygote), or, for payloads that cannot be split, as a whole script like stock Ansible.

Controller-side parsing imports Ansible lazily; the agent side never imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import threading
from pathlib import Path
from typing import Any

from accelerator.components.base import Component, ComponentError, ExecContext, Parsed, split_leading_options
from accelerator.model import JobResult

# What the copy action plugin turns `content=` into: a file uploaded next to the module.
_COPY_MODULES = ("ansible.builtin.copy", "ansible.legacy.copy")
_KEY_VALUE_WORD = re.compile(r"^\w+=")


def payload_cache_dir() -> Path:
    """Where the controller keeps payloads it uploads, content-addressed (XDG cache home)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "directord-accelerator" / "payloads"


def cache_blob(data: bytes, suffix: str) -> tuple[str, Path]:
    """Store bytes under their sha256 (once; atomically) so that Parsed.uploads has a path to send."""
    sha = hashlib.sha256(data).hexdigest()
    path = payload_cache_dir() / f"{sha}{suffix}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")  # threads of one process too
        partial.write_bytes(data)
        os.replace(partial, path)
    return sha, path


class Ansible(Component):
    verb = "ANSIBLE"
    help = "Run an Ansible module on each target: ANSIBLE [--timeout S] MODULE key=value ..."

    def build_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--timeout", type=float, help="seconds before the module's process group is killed")
        parser.add_argument("module", help="module name, e.g. ansible.builtin.command")
        parser.add_argument("args", nargs=argparse.REMAINDER, help="key=value arguments (free form for command)")

    def parse(self, spec: str | list[str] | dict[str, Any], base_dir: Path = Path(".")) -> Parsed:
        """Either "MODULE k=v ..." (as `ansible -m MODULE -a ...`) or {"module": ..., "args": {...}, "timeout": ...}."""
        if isinstance(spec, dict):
            module, module_args, timeout = self._from_map(spec)
        else:
            module, module_args, timeout = self._from_text(spec if isinstance(spec, str) else shlex.join(spec))
        if timeout is not None and timeout <= 0:
            raise ComponentError("ANSIBLE: --timeout must be positive")
        return self._build(module, module_args, timeout)

    def _from_map(self, spec: dict[str, Any]) -> tuple[str, dict[str, Any], float | None]:
        unknown = set(spec) - {"module", "args", "timeout"}
        if unknown:
            raise ComponentError(f"ANSIBLE: unknown field(s) {', '.join(sorted(unknown))}")
        module, module_args = spec.get("module"), spec.get("args") or {}
        if not isinstance(module, str) or not module:
            raise ComponentError("ANSIBLE: 'module' must name a module")
        if not isinstance(module_args, dict):
            raise ComponentError("ANSIBLE: 'args' must be a map of module arguments")
        timeout = spec.get("timeout")
        try:
            return module, dict(module_args), None if timeout is None else float(timeout)
        except (TypeError, ValueError):
            raise ComponentError(f"ANSIBLE: timeout must be a number, got {timeout!r}") from None

    def _from_text(self, text: str) -> tuple[str, dict[str, Any], float | None]:
        """Leading --options are ours; the rest is MODULE then its arguments, kept verbatim for parse_kv."""
        from ansible.errors import AnsibleError

        argv, rest = split_leading_options(text, self.parser())
        words = rest.split(None, 1)
        if not words:
            raise ComponentError("ANSIBLE: a module name is required")
        module, arg_text = words[0], words[1] if len(words) > 1 else ""
        options = self.parser().parse_args([*argv, "--", module])
        try:
            module_args = _module_args_from_text(module, arg_text)
        except AnsibleError as exc:
            raise ComponentError(f"ANSIBLE: cannot parse arguments of {module}: {exc}") from None
        return module, module_args, options.timeout

    def _build(self, module: str, module_args: dict[str, Any], timeout: float | None) -> Parsed:
        from accelerator.ansiballz import PayloadError, ZipPayload, build_module, resolve_module

        try:
            resolved = resolve_module(module)
            module_args, files, uploads = _stage_copy_content(resolved.fqcn, module_args)
            payload = build_module(module, module_args)
        except PayloadError as exc:
            raise ComponentError(f"ANSIBLE: {exc}") from None
        args: dict[str, Any] = {"module": module, "timeout": timeout}
        if isinstance(payload, ZipPayload):
            sha, path = cache_blob(payload.zip_data, ".zip")
            args.update(
                payload="zip", sha256=sha, module_fqn=payload.module_fqn, profile=payload.profile,
                params=payload.params, extensions=payload.extensions, rlimit_nofile=payload.rlimit_nofile,
                files=files,
            )
        else:
            if files:
                raise ComponentError(f"ANSIBLE: {module} cannot take content= ({payload.reason})")
            sha, path = cache_blob(payload.script, ".script")
            args.update(payload="script", sha256=sha, interpreter=payload.interpreter, args_text=payload.args_text)
        return Parsed(args=args, uploads={**uploads, sha: path}, timeout=timeout)

    def execute(self, args: dict[str, Any], ctx: ExecContext) -> JobResult:
        try:
            request = _request(args, ctx)
        except (ValueError, OSError, KeyError, TimeoutError) as exc:  # ComponentError, BlobError: ValueError
            return JobResult.failure(f"ANSIBLE {args.get('module', '?')}: cannot fetch the payload: {exc}")
        return ctx.run_module(request, args.get("timeout"), raw=bool(args.get("raw")))


def _module_args_from_text(module: str, text: str) -> dict[str, Any]:
    """key=value arguments as `ansible -m MODULE -a TEXT` reads them, with one difference.

    For free-form modules (command, shell, ...) stock parse_kv keeps only a few keys (chdir,
    creates, ...) and makes everything else the command, so `command cmd="echo hi"` would try to
    run a program named "cmd=echo hi".  A command made only of key=value words cannot run, so
    here such words are taken as the module's arguments instead.
    """
    from ansible import constants as C
    from ansible.parsing.splitter import parse_kv, split_args

    module_args = parse_kv(text, check_raw=module in C.MODULE_REQUIRE_ARGS)
    raw = module_args.get("_raw_params")
    if raw is not None and all(_KEY_VALUE_WORD.match(word) for word in split_args(raw)):
        module_args = {**parse_kv(raw), **{k: v for k, v in module_args.items() if k != "_raw_params"}}
    return module_args


def _stage_copy_content(fqcn: str, module_args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, Path]]:
    """Do what the copy action plugin does with content=: upload it and pass the file as src.

    The copy module itself ignores `content`; without this, `copy content=...` would fail with
    "Source None not found".  Returns (module args, {argument: sha256}, uploads).
    """
    if fqcn not in _COPY_MODULES or "content" not in module_args or module_args.get("src") is not None:
        return module_args, {}, {}
    args = dict(module_args)
    content = args.pop("content")
    if str(args.get("dest", "")).endswith("/"):
        raise ComponentError("ANSIBLE: copy can not use content with a dir as dest")
    data = json.dumps(content).encode() if isinstance(content, (dict, list)) else str(content).encode()
    args.setdefault("checksum", hashlib.sha1(data).hexdigest())  # the module verifies the transfer
    sha, path = cache_blob(data, ".blob")
    return args, {"src": sha}, {sha: path}


def _request(args: dict[str, Any], ctx: ExecContext) -> dict[str, Any]:
    """The zygote request for this job: local paths of the cached blobs plus the arguments."""
    common = {"cwd": args.get("cwd"), "env": {**ctx.environment, **(args.get("env") or {})}}
    if args["payload"] == "script":
        return {
            **common, "kind": "script", "script_path": str(ctx.fetch_blob(args["sha256"])),
            "interpreter": list(args.get("interpreter") or []), "args_text": args.get("args_text"),
        }
    return {
        **common,
        "kind": "zip",
        "zip_path": str(ctx.fetch_blob(args["sha256"])),
        "module_fqn": args["module_fqn"],
        "profile": args["profile"],
        "params": args["params"],
        "extensions": args.get("extensions") or {},
        "rlimit_nofile": args.get("rlimit_nofile") or 0,
        "files": {name: str(ctx.fetch_blob(sha)) for name, sha in (args.get("files") or {}).items()},
    }
