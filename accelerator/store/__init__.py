"""Choose a store from a URL: `memory`, `sqlite:///path/to.db`, `redis://host:port/db`."""

from __future__ import annotations

from accelerator.store.base import JobRecord, Store
from accelerator.store.memory import MemoryStore

__all__ = ["JobRecord", "Store", "open_store"]


def open_store(url: str) -> Store:
    """Open the store a URL names; an unknown scheme fails with the schemes that exist."""
    if url in ("", "memory", "memory://"):
        return MemoryStore()
    if url.startswith("sqlite://"):
        from accelerator.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite://"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from accelerator.store.redis import RedisStore

        return RedisStore(url)
    raise ValueError(f"unknown store {url!r}: use 'memory', 'sqlite:///PATH' or 'redis://HOST:PORT/DB'")
