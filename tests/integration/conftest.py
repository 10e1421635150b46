"""Fixtures that start real servers and agents; their logs print when a test fails."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.cluster import Cluster

AGENTS = ("a1", "a2", "a3")


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build clusters on demand; every process they started is stopped at the end."""
    clusters: list[Cluster] = []

    def make(*, agents: tuple[str, ...] = AGENTS, root: Path | None = None, **options: object) -> Cluster:
        cluster = Cluster(root=root or tmp_path / f"cluster{len(clusters)}", **options)  # type: ignore[arg-type]
        cluster.root.mkdir(parents=True, exist_ok=True)
        clusters.append(cluster)
        cluster.start_server()
        for name in agents:
            cluster.start_agent(name)
        if agents:
            cluster.wait_active(*agents)
        return cluster

    yield make
    for cluster in clusters:
        print(cluster.logs())
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A secure server with three enrolled agents, all active."""
    return make_cluster()


@pytest.fixture
def pidfiles(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Paths for long RUN commands to write `$$` to; each such command runs in its own process
    group (RUN starts a new session), which is killed at the end, so no `sleep 30` outlives a test
    whose agent was killed under it."""
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path / f"{name}.pid")
        return made[-1]

    yield make
    for path in made:
        try:
            os.killpg(int(path.read_text()), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
