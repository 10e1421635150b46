"""The agent journal: what makes a resent job id answer from history instead of running again."""

from __future__ import annotations

from pathlib import Path

from accelerator.journal import Entry, Journal
from accelerator.model import JobResult, JobState


def done(text: str) -> JobResult:
    return JobResult(state=JobState.SUCCESS, rc=0, stdout=text, changed=True, started=1.0, ended=2.0)


def test_started_and_finished_jobs_survive_a_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    journal.start("a")
    journal.start("b")
    journal.finish("b", done("out-b"))
    assert journal.lookup("nope") is None
    journal.close()
    reopened = Journal(tmp_path / "journal")
    assert reopened.lookup("a") == (Entry.STARTED, None)
    entry, result = reopened.lookup("b")  # type: ignore[misc]
    assert entry is Entry.DONE and result == done("out-b")


def test_a_torn_last_record_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = Journal(path)
    journal.finish("whole", done("kept"))
    journal.close()
    size = path.stat().st_size
    with path.open("ab") as handle:
        handle.write(b"\x93\xa5torn")  # a 3-element array whose elements never arrive
    reopened = Journal(path)
    assert path.stat().st_size == size
    assert reopened.lookup("whole")[1] == done("kept")  # type: ignore[index]
    reopened.finish("after", done("new"))
    reopened.close()
    assert Journal(path).lookup("after")[1] == done("new")  # type: ignore[index]


def test_compaction_keeps_the_most_recent_ids_with_their_results(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = Journal(path, keep=10)
    for number in range(25):
        journal.start(f"job{number}")
        journal.finish(f"job{number}", done(f"out{number}"))
    assert journal.lookup("job0") is None
    assert journal.lookup("job24")[1] == done("out24")  # type: ignore[index]
    journal.close()
    reopened = Journal(path, keep=10)
    assert reopened.lookup("job20")[1] == done("out20")  # type: ignore[index]
    assert reopened.lookup("job5") is None
