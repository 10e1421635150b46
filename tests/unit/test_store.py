"""One suite run against every store, so the memory, sqlite and redis stores stay interchangeable.

The redis store is tested against a real `redis-server` started once per session on a free
loopback port; each test gets its own key prefix.  A missing binary fails the tests instead of
skipping them, so CI cannot go green without having exercised redis.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import free_port

from accelerator.model import JobResult, JobSpec, JobState
from accelerator.store import JobRecord, Store, open_store
from accelerator.store.redis import DEFAULT_PREFIX, RedisStore, split_prefix

# -- the stores under test --------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL naming an empty store of the requested kind; opening it twice reaches the same data."""
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'jobs.db'}"
    return f"{request.getfixturevalue('redis_url')}?prefix=test-{uuid.uuid4().hex}:"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


durable = pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)


def make_record(job_id: str, submitted: float, agents: tuple[str, ...] = ("a1", "a2")) -> JobRecord:
    spec = JobSpec(verb="RUN", args={"command": "true"}, targets=list(agents), id=job_id, parent="p")
    return JobRecord(spec=spec, submitted=submitted, results={a: JobResult(JobState.PENDING) for a in agents})


def finished(rc: int = 0) -> JobResult:
    state = JobState.SUCCESS if rc == 0 else JobState.FAILED
    return JobResult(state=state, rc=rc, stdout="out", started=1.5, ended=2.25)


def copy(record: JobRecord) -> JobRecord:
    """An independent copy: MemoryStore hands out its live records, which set_result mutates."""
    return JobRecord.from_wire(record.to_wire())


# -- jobs and results -------------------------------------------------------------------------


def test_job_round_trips_with_results(store: Store) -> None:
    spec = JobSpec(
        verb="RUN",
        args={"command": "echo hi", "nested": {"list": [1, 2.5, None, True]}},
        targets=["a1", "a2"],
        timeout=30.0,
        blobs=["ab" * 32],
        label="RUN echo hi",
    )
    record = JobRecord(spec=spec, submitted=1700000000.123456, results={"a1": JobResult(JobState.PENDING)})
    record.results["a2"] = JobResult(JobState.SENT)
    expected = copy(record)
    store.add_job(record)
    result = JobResult(
        state=JobState.FAILED, rc=2, stdout="o", stderr="e", changed=True, started=1.0, ended=2.0,
        data={"facts": {"x": 1}}, error="boom",
    )
    store.set_result(spec.id, "a2", result)
    expected.results["a2"] = result

    assert store.get_job(spec.id) == expected


def test_unknown_job_is_none_and_its_results_are_dropped(store: Store) -> None:
    store.set_result("nope", "a1", finished())

    assert store.get_job("nope") is None
    assert store.jobs() == []


def test_add_job_again_replaces_it(store: Store) -> None:
    store.add_job(make_record("j", 1.0, agents=("a1", "a2")))
    replacement = make_record("j", 2.0, agents=("a3",))
    store.add_job(copy(replacement))

    assert store.get_job("j") == replacement


def test_jobs_are_oldest_first(store: Store) -> None:
    # Ids sort the other way round, so an id-ordered store would fail.
    for job_id, submitted in (("c", 1.0), ("b", 2.0), ("a", 3.0)):
        store.add_job(make_record(job_id, submitted))

    assert [record.spec.id for record in store.jobs()] == ["c", "b", "a"]


def test_purge_removes_only_finished_jobs_older_than_the_cutoff(store: Store) -> None:
    store.add_job(JobRecord(spec=JobSpec(verb="RUN", args={}, id="no-targets"), submitted=0.5))
    for job_id, submitted in (("old-done", 1.0), ("old-running", 2.0), ("new-done", 10.0)):
        store.add_job(make_record(job_id, submitted))
    for job_id in ("old-done", "new-done"):
        store.set_result(job_id, "a1", finished())
        store.set_result(job_id, "a2", finished(rc=1))
    store.set_result("old-running", "a1", finished())

    assert store.purge_jobs(older_than=5.0) == 1
    assert [r.spec.id for r in store.jobs()] == ["no-targets", "old-running", "new-done"]
    assert store.purge_jobs() == 1
    assert [r.spec.id for r in store.jobs()] == ["no-targets", "old-running"]


def test_purged_job_is_not_revived_by_a_late_result(store: Store) -> None:
    store.add_job(make_record("j", 1.0, agents=("a1",)))
    store.set_result("j", "a1", finished())
    store.purge_jobs()
    store.set_result("j", "a1", finished())

    assert store.get_job("j") is None


def test_unfinished_lists_agents_still_pending_or_sent(store: Store) -> None:
    for job_id, submitted in (("done", 1.0), ("half", 2.0), ("new", 3.0)):
        store.add_job(make_record(job_id, submitted))
    store.set_result("done", "a1", finished())
    store.set_result("done", "a2", finished())
    store.set_result("half", "a1", JobResult(JobState.SENT))
    store.set_result("half", "a2", finished())

    pending = [(record.spec.id, sorted(agents)) for record, agents in store.unfinished()]

    assert pending == [("half", ["a1"]), ("new", ["a1", "a2"])]


def test_many_results_then_flush(store: Store) -> None:
    """The benchmark's shape: 1,000 jobs x 10 agents, every result written separately."""
    agents = tuple(f"agent-{n}" for n in range(10))
    for n in range(1000):
        store.add_job(make_record(f"job-{n:04d}", float(n), agents))
    for n in range(1000):
        for agent in agents:
            store.set_result(f"job-{n:04d}", agent, finished())
    store.flush()

    records = store.jobs()
    assert len(records) == 1000
    assert all(record.finished and len(record.results) == 10 for record in records)


# -- nodes and checkpoints --------------------------------------------------------------------


def test_nodes_put_replace_and_delete(store: Store) -> None:
    store.put_node("a1", {"expiry": 10.0, "version": "1"})
    store.put_node("a2", {"expiry": 20.0})
    store.put_node("a1", {"expiry": 30.0, "host": "h1"})
    store.delete_node("a2")
    store.delete_node("never-seen")

    assert store.nodes() == {"a1": {"expiry": 30.0, "host": "h1"}}


def test_checkpoints_put_get_and_delete_by_prefix(store: Store) -> None:
    for key in ("graph/1/a", "graph/1/b", "graph/2/a", "graph%_odd"):
        store.put_checkpoint(key, {"key": key, "done": [1, 2]})

    assert store.get_checkpoint("graph/1/a") == {"key": "graph/1/a", "done": [1, 2]}
    assert store.get_checkpoint("missing") is None
    assert store.delete_checkpoints("graph/1/") == 2
    assert store.get_checkpoint("graph/1/a") is None
    assert store.get_checkpoint("graph/2/a") is not None
    assert store.delete_checkpoints("graph%") == 1  # '%' is literal, not a wildcard
    assert store.delete_checkpoints("graph/3/") == 0


# -- durability -------------------------------------------------------------------------------


@durable
def test_everything_survives_close_and_reopen(store_url: str) -> None:
    """A restarted server opens the same URL and finds what the old one wrote (close commits)."""
    first = open_store(store_url)
    first.add_job(make_record("j1", 1.0))
    first.add_job(make_record("j2", 2.0))
    first.set_result("j1", "a1", finished())
    first.put_node("a1", {"expiry": 5.0})
    first.put_checkpoint("graph/1", {"done": ["n1"]})
    expected = [copy(record) for record in first.jobs()]
    first.close()

    second = open_store(store_url)
    try:
        assert second.jobs() == expected
        assert second.nodes() == {"a1": {"expiry": 5.0}}
        assert second.get_checkpoint("graph/1") == {"done": ["n1"]}
        pending = [(record.spec.id, sorted(agents)) for record, agents in second.unfinished()]
        assert pending == [("j1", ["a2"]), ("j2", ["a1", "a2"])]
    finally:
        second.close()


# -- opening stores ---------------------------------------------------------------------------


def test_unknown_store_url_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="bogus://x"):
        open_store("bogus://x")


def test_redis_prefix_comes_out_of_the_url() -> None:
    assert split_prefix("redis://h:1/0?prefix=t1:&socket_timeout=3") == ("redis://h:1/0?socket_timeout=3", "t1:")
    assert split_prefix("redis://h:1/0") == ("redis://h:1/0", DEFAULT_PREFIX)


def test_unreachable_redis_names_the_url_without_its_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"

    with pytest.raises(ConnectionError, match=r"redis://:\*\*\*@127\.0\.0\.1") as raised:
        RedisStore(url)
    assert "s3cret" not in str(raised.value)
