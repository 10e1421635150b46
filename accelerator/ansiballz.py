"""Controller side of the ANSIBLE verb: build an AnsiballZ payload and split it for the wire.

ansible-core wraps every new-style Python module in an "AnsiballZ" script: a wrapper that ends in
one `_ansiballz_main(...)` call whose keywords hold a base64 zip (the module plus its module_utils)
and the task's JSON arguments.  Shipping that script per task would resend the same zip every
time; splitting it lets the agent cache the zip by content hash and receive only the arguments.

Anything that is not of that shape (old-style, WANT_JSON, binary modules, or a wrapper from an
ansible-core release we do not know) stays a whole script that the agent runs as a file, as stock
Ansible would.  Ansible is imported lazily, inside functions: the engine must import without it.
"""

from __future__ import annotations

import ast
import base64
import binascii
import functools
import hashlib
import io
import json
import shlex
import threading
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any

# The keywords of `_ansiballz_main` in ansible-core 2.19 to 2.21.  A keyword outside this set
# means a wrapper we do not understand, so the script runs whole rather than half-understood.
_REQUIRED_KEYWORDS = frozenset({"zip_data", "module_fqn", "params", "profile"})
_KNOWN_KEYWORDS = _REQUIRED_KEYWORDS | {"ansible_module", "date_time", "rlimit_nofile", "extensions"}
# Only used by the wrapper to timestamp a sitecustomize.py it appends to the zip; the zygote
# does not modify the (content-addressed) zip, so the value is not needed.
_IGNORED_KEYWORDS = frozenset({"date_time"})
_MAIN_GUARD = 'if __name__ == "__main__":'
LOADER_IN_ZIP = "ansible/module_utils/_internal/_ansiballz/_loader.py"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_stable_zip_lock = threading.Lock()
# How ansible-core writes the zip keyword (`f"{key}={value!r},"`, one per line): base64 needs no
# escaping, so the literal is cut out as text instead of being parsed (it is most of the script).
_ZIP_DATA_START = "\nzip_data='"

# Module styles (ansible.executor.module_common) whose arguments travel in a separate file.
_STYLES_WITH_ARGS_FILE = ("old", "non_native_want_json", "binary")


class PayloadError(ValueError):
    """A module that cannot be found or built; the text names the module."""


@dataclass(frozen=True, slots=True)
class ZipPayload:
    """A split AnsiballZ payload: the zip is cached by hash, the rest travels with each task."""

    zip_data: bytes
    module_fqn: str  # the module's import name inside the zip, e.g. ansible.modules.ping
    ansible_module: str
    profile: str  # serialization profile shared by params and result encoding
    params: str  # JSON: {"ANSIBLE_MODULE_ARGS": {...}}
    extensions: dict[str, Any] = field(default_factory=dict)
    rlimit_nofile: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.zip_data).hexdigest()


@dataclass(frozen=True, slots=True)
class ScriptPayload:
    """A module that must run as a whole file with an interpreter, as stock Ansible runs it."""

    script: bytes
    reason: str  # why it was not split, for logs and error texts
    args_text: str | None = None  # content of the arguments file passed as argv[1], if any
    binary: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.script).hexdigest()

    @property
    def interpreter(self) -> list[str]:
        """The shebang's command, or [] when the script has none (binary modules execute directly)."""
        if self.binary or not self.script.startswith(b"#!"):
            return []
        line = self.script.split(b"\n", 1)[0][2:].decode("utf-8", errors="replace")
        try:
            return shlex.split(line)
        except ValueError:
            return line.split()


ModulePayload = ZipPayload | ScriptPayload


def split_payload(b_module_data: bytes) -> ModulePayload:
    """Split an AnsiballZ script into zip and arguments, or keep it whole when it is not one.

    Called for every module a task runs: the zip (the same for every run of a module) is
    decoded and normalised once per process, and only the small rest of the call is parsed.
    """
    try:
        text = b_module_data.decode("utf-8")
    except UnicodeDecodeError:
        return ScriptPayload(b_module_data, reason="not UTF-8 text (binary module?)")
    call = _main_call(text)
    if isinstance(call, str):
        return ScriptPayload(b_module_data, reason=call)
    keywords, encoded_zip = call
    payload = _payload_from_keywords(keywords, encoded_zip)
    if isinstance(payload, str):
        return ScriptPayload(b_module_data, reason=payload)
    return payload


def _main_call(text: str) -> tuple[dict[str, ast.expr], str | None] | str:
    """The keyword expressions of the trailing `_ansiballz_main(...)` call and the zip's base64
    text (None when it was not cut out; then it is among the keywords), or why there is none.

    Only the tail after the last `__main__` guard is parsed: the wrapper above it is large and
    of no interest, and parsing only the call keeps the split cheap.
    """
    start = text.rfind(_MAIN_GUARD)
    if start < 0 or "def _ansiballz_main(" not in text[:start]:
        return "no AnsiballZ wrapper"
    tail = text[start:]
    encoded_zip = None
    begin = tail.find(_ZIP_DATA_START)
    end = tail.find("'", begin + len(_ZIP_DATA_START)) if begin >= 0 else -1
    if end >= 0:
        begin += len(_ZIP_DATA_START)
        encoded_zip = tail[begin:end]
        tail = tail[:begin] + tail[end:]
    try:
        tree = ast.parse(tail)
    except (SyntaxError, ValueError) as exc:
        return f"cannot parse the AnsiballZ call: {exc}"
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.If) or len(tree.body[0].body) != 1:
        return "unexpected code after the AnsiballZ guard"
    statement = tree.body[0].body[0]
    call = statement.value if isinstance(statement, ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_ansiballz_main"):
        return "the guard does not call _ansiballz_main"
    if call.args or any(k.arg is None for k in call.keywords):
        return "_ansiballz_main called with positional or ** arguments"
    keywords = {k.arg: k.value for k in call.keywords if k.arg is not None}
    unknown = set(keywords) - _KNOWN_KEYWORDS
    if unknown:
        return f"unknown AnsiballZ keywords: {', '.join(sorted(unknown))}"
    missing = _REQUIRED_KEYWORDS - set(keywords)
    if missing:
        return f"missing AnsiballZ keywords: {', '.join(sorted(missing))}"
    return keywords, encoded_zip


def _payload_from_keywords(keywords: dict[str, ast.expr], encoded_zip: str | None) -> ZipPayload | str:
    """Evaluate the literal keywords into a ZipPayload, or say which one is not what we expect."""
    values: dict[str, Any] = {}
    for name, node in keywords.items():
        if name in _IGNORED_KEYWORDS:
            continue
        try:
            values[name] = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return f"AnsiballZ keyword {name} is not a literal"
    expected = {"zip_data": str, "module_fqn": str, "params": str, "profile": str,
                "ansible_module": str, "extensions": dict, "rlimit_nofile": int}
    for name, kind in expected.items():
        if name in values and not isinstance(values[name], kind):
            return f"AnsiballZ keyword {name} is not a {kind.__name__}"
    with _stable_zip_lock:  # threads of one run ask for the same module at once: decode it once
        zip_data = _stable_zip_from_base64(values["zip_data"] if encoded_zip is None else encoded_zip)
    if isinstance(zip_data, str):
        return zip_data
    return ZipPayload(
        zip_data=zip_data,
        module_fqn=values["module_fqn"],
        ansible_module=values.get("ansible_module", values["module_fqn"]),
        profile=values["profile"],
        params=values["params"],
        extensions=values.get("extensions", {}),
        rlimit_nofile=values.get("rlimit_nofile", 0),
    )


@functools.lru_cache(maxsize=64)
def _stable_zip_from_base64(encoded: str) -> bytes | str:
    """The zip the keyword holds, made stable (below), or what is wrong with it."""
    try:
        zip_data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "AnsiballZ zip_data is not base64"
    if not _zip_has_loader(zip_data):
        return f"the AnsiballZ zip has no {LOADER_IN_ZIP} (an ansible-core release we do not know)"
    return _stable_zip(zip_data)


def _zip_has_loader(zip_data: bytes) -> bool:
    """The zygote calls the zip's own `_loader.run_module`; without it the zip cannot run there."""
    try:
        with zipfile.ZipFile(io.BytesIO(zip_data)) as archive:
            return LOADER_IN_ZIP in archive.namelist()
    except zipfile.BadZipFile:
        return False


def _stable_zip(zip_data: bytes) -> bytes:
    """The same zip with every timestamp set to 1980-01-01, so that its sha256 depends on content only.

    ansible-core stamps each member with the time the zip was built, so every controller process
    (every CLI call, every playbook run) would make a new hash for the same module and upload
    it to every agent again.  Nothing reads the stamps: zipimport compiles the sources as they are.
    """
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_data)) as source, zipfile.ZipFile(rebuilt, "w") as target:
        for info in source.infolist():
            stable = zipfile.ZipInfo(info.filename, date_time=_ZIP_EPOCH)
            stable.compress_type = info.compress_type
            stable.external_attr = info.external_attr
            target.writestr(stable, source.read(info))
    return rebuilt.getvalue()


@dataclass(frozen=True, slots=True)
class ResolvedModule:
    """Where the plugin loader found a module: its canonical name and source file."""

    fqcn: str  # e.g. ansible.builtin.copy, whatever alias or redirect the user wrote
    path: str


def resolve_module(module_name: str) -> ResolvedModule:
    """Find a module the way a task would (redirects, collections, configured library paths)."""
    from ansible.plugins.loader import module_loader

    _ensure_plugin_loader()
    context = module_loader.find_plugin_with_context(module_name)
    if not context.resolved or not context.plugin_resolved_path:
        raise PayloadError(f"module {module_name!r} not found in the configured module paths")
    return ResolvedModule(fqcn=context.resolved_fqcn or module_name, path=context.plugin_resolved_path)


def _ensure_plugin_loader() -> None:
    """Configure the collection loader once; inside ansible-playbook it already is (no second setup)."""
    from ansible.plugins.loader import init_plugin_loader
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader()


def build_module(
    module_name: str,
    module_args: dict[str, Any],
    task_vars: dict[str, Any] | None = None,
    module_path: str | None = None,
) -> ModulePayload:
    """Build a module's payload outside a playbook, as `ansible -m MODULE -a ARGS` would.

    For the CLI (`directord exec --verb ANSIBLE ...`): the module is found through the plugin
    loader unless its source file is given, the internal `_ansible_*` arguments an action plugin
    adds get their ad-hoc defaults (explicit ones win), and the Python interpreter defaults to
    python3 so that no interpreter discovery is needed (the agent runs zip payloads with its
    own Python anyway).
    """
    from ansible.errors import AnsibleError
    from ansible.executor.module_common import modify_module
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    _ensure_plugin_loader()  # module_utils are located through it even when the path is given
    path = module_path or resolve_module(module_name).path
    variables = {"ansible_python_interpreter": "/usr/bin/python3", **(task_vars or {})}
    args = {**_internal_args(module_name), **module_args}
    try:
        built = modify_module(
            module_name=module_name,
            module_path=path,
            module_args=args,
            templar=Templar(loader=DataLoader(), variables=variables),
            task_vars=variables,
        )
    except AnsibleError as exc:
        raise PayloadError(f"cannot build module {module_name!r}: {exc}") from exc
    style, b_module_data = _built_parts(built)
    if style in _STYLES_WITH_ARGS_FILE:
        return ScriptPayload(
            b_module_data,
            reason=f"{style} module style",
            args_text=_args_file_text(style, args),
            binary=style == "binary",
        )
    payload = split_payload(b_module_data)
    if isinstance(payload, ScriptPayload):
        return replace(payload, reason=f"{module_name}: {payload.reason}")
    return payload


def _built_parts(built: Any) -> tuple[str, bytes]:
    """(module_style, script bytes) from modify_module: a _BuiltModule since 2.19, a tuple before."""
    if isinstance(built, tuple):
        return built[1], built[0]
    return built.module_style, built.b_module_data


def _args_file_text(style: str, args: dict[str, Any]) -> str:
    """The arguments file ActionBase._execute_module writes for modules that read one."""
    if style == "old":
        return "".join(f"{key}={shlex.quote(str(value))} " for key, value in args.items())
    return json.dumps(args)


def _internal_args(module_name: str) -> dict[str, Any]:
    """What ActionBase._update_module_args sends for an ad-hoc task with default settings."""
    import ansible.constants as C
    from ansible import __version__

    return {
        "_ansible_check_mode": False,
        "_ansible_no_log": False,
        "_ansible_debug": C.DEFAULT_DEBUG,
        "_ansible_diff": False,
        "_ansible_verbosity": 0,
        "_ansible_version": __version__,
        "_ansible_module_name": module_name,
        "_ansible_syslog_facility": C.DEFAULT_SYSLOG_FACILITY,
        "_ansible_selinux_special_fs": C.DEFAULT_SELINUX_SPECIAL_FS,
        "_ansible_keep_remote_files": C.DEFAULT_KEEP_REMOTE_FILES,
        "_ansible_remote_tmp": "~/.ansible/tmp",
        "_ansible_ignore_unknown_opts": False,
        "_ansible_tracebacks_for": _tracebacks_for(),
    }


def _tracebacks_for() -> list[str]:
    """The controller's DISPLAY_TRACEBACK setting as modules receive it (an internal API: guarded)."""
    try:
        from ansible.module_utils._internal import _traceback

        return list(_traceback.traceback_for())
    except (ImportError, AttributeError):
        return []
