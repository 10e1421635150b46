"""A real, in-process ExecContext for component tests: no agent, no server, no sockets.

Blobs come from the local files a component's `parse` listed as uploads, checked against their
sha256 as the agent's blob cache checks them; templates are rendered with Jinja2 under the same
rules as the agent (StrictUndefined, trailing newline kept).  `run_module` is left out: no verb
under test here runs Ansible modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from accelerator.blobs import BlobError
from accelerator.blobs import sha256_of as sha256_file
from accelerator.components.base import ComponentError, Parsed


@dataclass
class LocalContext:
    allowed_roots: tuple[Path, ...]
    state_dir: Path
    agent_name: str = "test-agent"
    job_id: str = "test-job"
    variables: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, Path] = field(default_factory=dict)

    def add_uploads(self, parsed: Parsed) -> None:
        """Make the files a parse listed fetchable, as the server's blob store would."""
        self.blobs.update(parsed.uploads)

    def fetch_blob(self, sha256: str) -> Path:
        path = self.blobs.get(sha256)
        if path is None:
            raise ComponentError(f"blob {sha256[:12]}: never uploaded")
        if sha256_file(path) != sha256:
            raise BlobError(f"blob {sha256[:12]}: content does not match its sha256")
        return path

    def exchange_query(self, key: str, value: Any, timeout: float) -> dict[str, Any]:
        """A single-agent world: the gathered map holds only this agent's value."""
        return {self.agent_name: value}

    def render(self, text: str) -> str:
        environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            return environment.from_string(text).render(**self.variables)
        except jinja2.TemplateError as exc:
            raise ComponentError(f"template error: {exc}") from None
