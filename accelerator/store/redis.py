"""A store in Redis, so jobs and results outlive the server and other tools can read them.

Layout, every key under one prefix (default "directord:", or `?prefix=` in the URL so that
several servers or test runs can share one database):

    {prefix}jobs             hash     job id -> packed {"spec": spec wire, "submitted": time}
    {prefix}jobs:order       zset     job id scored by submitted time, for `jobs()` ordering
    {prefix}results:{job id} hash     agent -> packed result wire
    {prefix}nodes            hash     agent name -> packed info
    {prefix}checkpoints      hash     key -> packed value

Values are msgpack, never pickles.  The server records a result for every agent of every job,
so a round trip per write would cap it at the network latency; writes are queued in one
MULTI/EXEC pipeline and sent in batches instead (see `_queued`).  Every read sends the queue
first, so reads see everything written.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgpack
import redis
from redis.typing import EncodableT

from accelerator.model import JobResult
from accelerator.protocol import pack_map
from accelerator.store.base import JobRecord, Store

DEFAULT_PREFIX = "directord:"
BATCH_COMMANDS = 1000  # send the queue once this many commands wait...
BATCH_SECONDS = 0.2  # ...or once a write comes this long after the last send
CONNECT_TIMEOUT = 5.0  # seconds; a `socket_connect_timeout` in the URL wins

# A result for an unknown (e.g. already purged) job is dropped, as MemoryStore does, rather
# than left as an orphaned hash.  A script keeps the check and the write in one queued command.
SET_RESULT_IF_JOB = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
    return redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return 0
"""


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


# redis-py types every reply as `bytes | str` because `decode_responses` decides at run time;
# this client never decodes, so replies are bytes, and the casts below say so.
Blobs = dict[bytes, bytes]


def split_prefix(url: str) -> tuple[str, str]:
    """Take `prefix=` out of the URL's query (redis-py would reject it) and return both parts."""
    base, _, query = url.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    prefixes = [value for name, value in params if name == "prefix"]
    rest = urlencode([(name, value) for name, value in params if name != "prefix"])
    return (f"{base}?{rest}" if rest else base), (prefixes[-1] if prefixes else DEFAULT_PREFIX)


def redacted(url: str) -> str:
    """The URL without its password, fit for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class RedisStore(Store):
    def __init__(self, url: str) -> None:
        self._url = redacted(url)
        client_url, self._prefix = split_prefix(url)
        self._client = redis.Redis.from_url(client_url, socket_connect_timeout=CONNECT_TIMEOUT)
        self._set_result_script = self._client.register_script(SET_RESULT_IF_JOB)
        self._pipe = self._client.pipeline(transaction=True)
        self._last_send = time.monotonic()
        with self._reaching():
            self._client.ping()

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turn redis-py's connection failures into one that says which store is down."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ConnectionError(f"redis store {self._url} is unreachable: {exc}") from exc

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    # -- batching ---------------------------------------------------------------------------

    def _queued(self) -> None:
        if len(self._pipe) >= BATCH_COMMANDS or time.monotonic() - self._last_send >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send the queued writes as one transaction.  On failure the queue is lost with it."""
        with self._reaching():
            self._pipe.execute()
        self._last_send = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._client.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[redis.Redis]:
        """The client for reads, once the queued writes have landed."""
        self.flush()
        with self._reaching():
            yield self._client

    # -- jobs -------------------------------------------------------------------------------

    def add_job(self, record: JobRecord) -> None:
        """Insert or replace the job; replacing drops its old results, as MemoryStore does."""
        job_id = record.spec.id
        job = pack_map({"spec": record.spec.to_wire(), "submitted": record.submitted})
        results: dict[EncodableT, EncodableT] = {a: pack_map(r.to_wire()) for a, r in record.results.items()}
        self._pipe.hset(self._key("jobs"), job_id, job)
        self._pipe.zadd(self._key("jobs:order"), {job_id: record.submitted})
        self._pipe.delete(self._key("results", job_id))
        if results:
            self._pipe.hset(self._key("results", job_id), mapping=results)
        self._queued()

    def set_result(self, job_id: str, agent: str, result: JobResult) -> None:
        keys = [self._key("jobs"), self._key("results", job_id)]
        self._set_result_script(keys=keys, args=[job_id, agent, pack_map(result.to_wire())], client=self._pipe)
        self._queued()

    def get_job(self, job_id: str) -> JobRecord | None:
        records = self._records([job_id])
        return records[0] if records else None

    def jobs(self) -> list[JobRecord]:
        """Every job ordered by submission time (then by id for equal times)."""
        with self._reading() as client:
            ids = cast(list[bytes], client.zrange(self._key("jobs:order"), 0, -1))
        return self._records([job_id.decode() for job_id in ids])

    def purge_jobs(self, older_than: float | None = None) -> int:
        upper = "+inf" if older_than is None else f"({older_than!r}"
        with self._reading() as client:
            ids = cast(list[bytes], client.zrangebyscore(self._key("jobs:order"), "-inf", upper))
        doomed = [record.spec.id for record in self._records([i.decode() for i in ids]) if record.finished]
        if doomed:
            self._pipe.hdel(self._key("jobs"), *doomed)
            self._pipe.zrem(self._key("jobs:order"), *doomed)
            self._pipe.delete(*(self._key("results", job_id) for job_id in doomed))
            self._queued()
        return len(doomed)

    def _records(self, job_ids: list[str]) -> list[JobRecord]:
        """Load the given jobs with their results in one round trip, keeping the given order."""
        if not job_ids:
            return []
        with self._reading() as client:
            pipe = client.pipeline(transaction=False)
            pipe.hmget(self._key("jobs"), job_ids)
            for job_id in job_ids:
                pipe.hgetall(self._key("results", job_id))
            jobs, *results = pipe.execute()
        records = []
        for job, agents in zip(jobs, results):
            if job is not None:
                wire = _unpack(job)
                # Sorted: Redis keeps a hash's field order only while the hash is small.
                wire["results"] = {agent.decode(): _unpack(agents[agent]) for agent in sorted(agents)}
                records.append(JobRecord.from_wire(wire))
        return records

    # -- nodes and checkpoints --------------------------------------------------------------

    def put_node(self, name: str, info: dict[str, Any]) -> None:
        self._pipe.hset(self._key("nodes"), name, pack_map(info))
        self._queued()

    def nodes(self) -> dict[str, dict[str, Any]]:
        with self._reading() as client:
            raw = cast(Blobs, client.hgetall(self._key("nodes")))
        return {name.decode(): _unpack(info) for name, info in raw.items()}

    def delete_node(self, name: str) -> None:
        self._pipe.hdel(self._key("nodes"), name)
        self._queued()

    def put_checkpoint(self, key: str, value: dict[str, Any]) -> None:
        self._pipe.hset(self._key("checkpoints"), key, pack_map(value))
        self._queued()

    def get_checkpoint(self, key: str) -> dict[str, Any] | None:
        with self._reading() as client:
            raw = cast("bytes | None", client.hget(self._key("checkpoints"), key))
        return _unpack(raw) if raw is not None else None

    def delete_checkpoints(self, prefix: str) -> int:
        with self._reading() as client:
            keys = cast(list[bytes], client.hkeys(self._key("checkpoints")))
        doomed = [key for key in keys if key.decode().startswith(prefix)]
        if doomed:
            self._pipe.hdel(self._key("checkpoints"), *doomed)
            self._queued()
        return len(doomed)
