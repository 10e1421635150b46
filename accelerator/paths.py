"""Where things live by default, in one place (server home, agent home, control socket)."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """$DIRECTORD_HOME, else ~/.directord: the server's keys, blobs, control socket."""
    return Path(os.environ.get("DIRECTORD_HOME") or Path.home() / ".directord")


def default_agent_home() -> Path:
    return Path(os.environ.get("DIRECTORD_AGENT_HOME") or default_home() / "agent")


def control_endpoint_for(home: Path) -> str:
    return f"ipc://{home / 'control.sock'}"
