"""A module's module_utils, found once per controller user instead of once per playbook run.

Before a new-style module first runs in a playbook, ansible-core's `recursive_finder` parses the
module and every module_utils file it imports, transitively, to decide what goes into the
AnsiballZ zip: about half a second of CPU per module (copy, command, file, stat, ...).  Its own
cache of the result lives in the run's temporary directory and dies with the run, so every run
pays it again; a stock run pays it in a forked worker while the others wait on a lock, ours in
the controller process, where it holds the GIL for the whole playbook.

This cache keeps what `recursive_finder` wrote into the zip (and the module's metadata) on disk,
keyed by the module's source, its name, the ansible-core release and the module_utils and
collection search paths.  An entry is used only when every file it took from disk still has
the same content (each is read and compared), so an edited module or module_utils file, in
ansible-core or in a collection, makes a new entry.  Entries holding a file whose origin is not
known are not kept, unless it is ansible-core's own (generated package stubs, embedded resources).  What is not detected: a new file that would now shadow a cached one in an
earlier search directory; delete ~/.cache/directord-accelerator/module-utils to see it at once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from ansible import __version__ as ansible_version
from ansible._internal._datatag._tags import Origin
from ansible.executor import module_common
from ansible.utils.display import Display

display = Display()

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "directord-accelerator" / "module-utils"


class _RecordingZip:
    """Stands in for the AnsiballZ ZipFile while `recursive_finder` writes to it: passes each
    member on and remembers it with the file it came from (the Origin tag of its source)."""

    def __init__(self, target: zipfile.ZipFile) -> None:
        self._target = target
        self.compression = target.compression
        self.members: list[dict[str, Any]] = []

    def writestr(self, zinfo: zipfile.ZipInfo, data: bytes | str) -> None:
        self._target.writestr(zinfo, data)
        origin = Origin.get_tag(data)
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self.members.append({"name": zinfo.filename, "source": origin.path if origin else None,
                             "data": base64.b64encode(raw).decode()})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def install() -> None:
    """Put the caching finder in place of ansible-core's (once per process)."""
    if getattr(module_common.recursive_finder, "directord_cached", False):
        return
    original = module_common.recursive_finder

    @functools.wraps(original)
    def recursive_finder(name: str, module_fqn: str, module_data: Any, zf: zipfile.ZipFile, date_time: Any,
                         extension_manager: Any) -> Any:
        if extension_manager.debugger_enabled:  # it records source locations as a side effect
            return original(name, module_fqn, module_data, zf, date_time, extension_manager)
        path = CACHE_DIR / f"{_key(module_fqn, module_data, extension_manager)}.json"
        entry = _load(path)
        if entry is not None:
            for member in entry["members"]:
                zf.writestr(module_common._make_zinfo(member["name"], date_time, zf=zf),
                            base64.b64decode(member["data"]))
            return module_common.ModuleMetadataV1(serialization_profile=entry["profile"])
        recorder = _RecordingZip(zf)
        metadata = original(name, module_fqn, module_data, recorder, date_time, extension_manager)
        _store(path, recorder.members, metadata)
        return metadata

    recursive_finder.directord_cached = True  # type: ignore[attr-defined]
    module_common.recursive_finder = recursive_finder


def _key(module_fqn: str, module_data: Any, extension_manager: Any) -> str:
    from ansible.plugins.loader import module_utils_loader
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    data = module_data.encode() if isinstance(module_data, str) else bytes(module_data)
    parts = [ansible_version, module_common.__file__, module_fqn, hashlib.sha256(data).hexdigest(),
             *sorted(extension_manager.module_names), "|",
             *module_utils_loader._get_paths(subdirs=False), "|", *AnsibleCollectionConfig.collection_paths]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _load(path: Path) -> dict[str, Any] | None:
    """The entry, if there is one and every file it was made from is unchanged."""
    try:
        entry = json.loads(path.read_text())
        for member in entry["members"]:
            if member["source"] is not None and Path(member["source"]).read_bytes() != base64.b64decode(member["data"]):
                display.debug(f"module_utils cache: {member['source']} changed; rebuilding")
                return None
        return entry
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(path: Path, members: list[dict[str, Any]], metadata: Any) -> None:
    if type(metadata) is not module_common.ModuleMetadataV1:
        return
    if any(m["source"] is None and m["data"] and not m["name"].startswith("ansible/") for m in members):
        return  # content from outside ansible-core (whose release is in the key) that we could not check later
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps({"profile": metadata.serialization_profile, "members": members}))
        os.replace(partial, path)
    except OSError as exc:
        display.debug(f"module_utils cache: cannot write {path}: {exc}")
