"""PLAYBOOK: run a role or playbook that is not converted yet, as it is, inside the graph.

During a migration some parts of a deployment stay Ansible.  A task whose job is
`PLAYBOOK: {playbook: site.yml}` or `PLAYBOOK: {role: ntp}` runs it with ansible-playbook for
the one host the task runs on, through ansible-runner (the library made to drive
ansible-playbook from Python), by default with our accelerated strategy so it uses the agents
too.  The task's outcome is the run's: failed when ansible-playbook fails, changed when the run
changed something on the host.  The generated inventory gives the host its inventory variables
(connection settings such as ansible_host live there); variables set by converted tasks before
it are passed as extra vars only when listed in `pass_vars`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Generator

from accelerator.graph.steps import StepError

DEFAULT_STRATEGY = "directord.accelerator.linear"
POLL_SECONDS = 0.1
FIELDS = {"playbook", "role", "roles_path", "extra_vars", "strategy", "pass_vars"}


def run(spec: Any, host: str, host_vars: dict[str, Any], variables: dict[str, Any], base_dir: Path,
        sleep: Any) -> Generator[Any, Any, dict[str, Any]]:
    """Run the playbook (yielding `sleep` while it runs) and return the task's result."""
    import ansible_runner  # controller only, and only for graphs that use PLAYBOOK

    if not isinstance(spec, dict) or ("playbook" in spec) == ("role" in spec) or set(spec) - FIELDS:
        raise StepError("PLAYBOOK takes exactly one of 'playbook' or 'role', and optionally "
                        "roles_path, extra_vars, strategy, pass_vars")
    private = Path(tempfile.mkdtemp(prefix="directord-playbook-"))
    try:
        playbook = _playbook(spec, base_dir, private)
        extra = {name: variables[name] for name in spec.get("pass_vars") or [] if name in variables}
        extra.update(spec.get("extra_vars") or {})
        thread, runner = ansible_runner.run_async(
            private_data_dir=str(private),
            playbook=str(playbook),
            inventory={"all": {"hosts": {host: _jsonable(host_vars)}}},
            limit=host,
            extravars=_jsonable(extra),
            envvars=_environment(spec, base_dir),
            quiet=True,
            json_mode=False,
        )
        while thread.is_alive():
            yield sleep(POLL_SECONDS)
        return _result(runner, host)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _playbook(spec: dict[str, Any], base_dir: Path, private: Path) -> Path:
    if "playbook" in spec:
        path = Path(spec["playbook"])
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise StepError(f"PLAYBOOK: {path} does not exist")
        return path
    generated = private / "role.yml"
    generated.write_text(json.dumps([{"hosts": "all", "gather_facts": True, "roles": [str(spec["role"])]}]))
    return generated


def _environment(spec: dict[str, Any], base_dir: Path) -> dict[str, str]:
    env = {"ANSIBLE_STRATEGY": str(spec.get("strategy", DEFAULT_STRATEGY)), "ANSIBLE_RETRY_FILES_ENABLED": "False",
           # ansible-runner starts `ansible-playbook` from PATH: prefer the one beside this Python
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    roles_path = spec.get("roles_path")
    if roles_path:
        path = Path(roles_path)
        env["ANSIBLE_ROLES_PATH"] = str(path if path.is_absolute() else base_dir / path)
    checkout_collections = Path(__file__).resolve().parents[2] / "collections"
    if env["ANSIBLE_STRATEGY"].startswith("directord.") and checkout_collections.is_dir():
        # running from a checkout: make the strategy findable, after what the user configured
        configured = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")
        env["ANSIBLE_COLLECTIONS_PATH"] = ":".join(p for p in (configured, str(checkout_collections)) if p)
    return env


def _result(runner: Any, host: str) -> dict[str, Any]:
    stats = runner.stats or {}
    per_host = {kind: (stats.get(kind) or {}).get(host, 0) for kind in
                ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")}
    result: dict[str, Any] = {"changed": per_host["changed"] > 0, "rc": runner.rc, "stats": per_host}
    if runner.rc != 0 or per_host["failures"] or per_host["dark"]:
        tail = (runner.stdout.read() if hasattr(runner.stdout, "read") else "")[-2000:]
        result.update(failed=True, msg=f"ansible-playbook failed (rc={runner.rc}, status {runner.status}): {tail}")
    return result


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
