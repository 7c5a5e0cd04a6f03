"""Batch writes behind the next batch's preparation, and each batch's comparison with the
ledger while the next batch is identified: WriteBehind and Ahead themselves, and the engine
using them on MariaDB and PostgreSQL (inline on SQLite) without changing any outcome."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from limsync.connectors.base import Stream, Streams
from limsync.errors import SourceError
from limsync.pipeline import Database, Key, Manual, Schema
from limsync.sync.engine import SyncEngine
from limsync.sync.mapping import Lookup, Mapper, StreamMap
from limsync.sync.overlap import Ahead, WriteBehind
from limsync.testing.memory import MemoryConnector, MemorySettings

# --- WriteBehind ------------------------------------------------------------------------------


def test_writes_run_one_at_a_time_in_order_in_a_background_thread() -> None:
    writes = WriteBehind(enabled=True)
    log: list[tuple[int, str]] = []
    running = threading.Event()

    def write(n: int) -> Any:
        def run() -> int:
            assert not running.is_set(), "two writes at once"
            running.set()
            time.sleep(0.01)
            log.append((n, threading.current_thread().name))
            running.clear()
            return n

        return run

    for n in range(1, 5):
        writes.submit(write(n))
    writes.wait()
    writes.close()
    assert [n for n, _ in log] == [1, 2, 3, 4]
    assert all(name.startswith("limsync-write") for _, name in log)
    assert writes.total == 10


def test_switched_off_writes_run_at_once_in_the_callers_thread() -> None:
    writes = WriteBehind(enabled=False)
    names: list[str] = []
    writes.submit(lambda: names.append(threading.current_thread().name) or 3)
    assert names == [threading.current_thread().name] and writes.total == 3


def test_a_failed_write_is_raised_by_the_next_submit_and_the_next_one_never_runs() -> None:
    writes = WriteBehind(enabled=True)
    ran: list[int] = []

    def fail() -> int:
        raise SourceError("the database went away")

    writes.submit(fail)
    with pytest.raises(SourceError, match="went away"):
        writes.submit(lambda: ran.append(2) or 1)
    writes.close()
    assert ran == []


def test_close_waits_for_the_write_in_flight_and_keeps_the_callers_error() -> None:
    writes = WriteBehind(enabled=True)
    done = threading.Event()

    def slow() -> int:
        time.sleep(0.05)
        done.set()
        return 1

    writes.submit(slow)
    writes.close()  # as on the way out of a failing stream
    assert done.is_set() and writes.total == 1

    failing = WriteBehind(enabled=True)
    failing.submit(lambda: 1 // 0)
    failing.close()  # logged, not raised: the caller is already failing with its own error


# --- Ahead -----------------------------------------------------------------------------------


def test_ahead_runs_a_task_in_its_thread_and_returns_once_it_has_started() -> None:
    ahead = Ahead(enabled=True, name="limsync-test")
    release = threading.Event()
    started: list[str] = []

    def task() -> str:
        started.append(threading.current_thread().name)
        release.wait(5)
        return "answer"

    future = ahead.submit(task)
    assert started and started[0].startswith("limsync-test")  # running already
    assert not future.done()  # and the caller goes on meanwhile
    release.set()
    assert future.result(5) == "answer"
    ahead.close()


def test_ahead_runs_inline_when_off_or_asked_to_and_raises_then() -> None:
    here = threading.current_thread().name
    for ahead, inline in ((Ahead(enabled=False, name="x"), False), (Ahead(True, "x"), True)):
        future = ahead.submit(lambda: threading.current_thread().name, inline=inline)
        assert future.done() and future.result() == here
        with pytest.raises(ZeroDivisionError):
            ahead.submit(lambda: 1 // 0, inline=inline)
        ahead.close()


def test_a_background_tasks_error_is_raised_by_its_result_and_close_waits() -> None:
    ahead = Ahead(enabled=True, name="limsync-test")
    failed = ahead.submit(lambda: 1 // 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(5)
    done = threading.Event()
    ahead.submit(lambda: time.sleep(0.05) or done.set())
    ahead.close()
    assert done.is_set()


# --- the engine ---------------------------------------------------------------------------------

fam = Schema("fam")


class Animal(Manual):
    """An animal, naming its mother by nickname: a lookup into its own table."""

    __schema__ = fam
    animal_uuid: Annotated[uuid.UUID, Key]
    nickname: Annotated[str, Field(max_length=16)]
    mother_uuid: uuid.UUID | None = None


class AnimalRec(BaseModel):
    id: uuid.UUID
    nickname: str
    mother: str | None = None


class Colony(MemoryConnector):
    type_name = "overlaptest"
    streams = Streams(Stream("animals", "animals", AnimalRec, key=("id",)))


def _animal(rec: Any) -> list[Any]:
    mother = Lookup(Animal, {"nickname": rec.mother}, "animal_uuid") if rec.mother else None
    row = {"animal_uuid": rec.id, "nickname": rec.nickname, "mother_uuid": mother}
    return [(Animal, row)]


def animals(n: int) -> list[dict[str, Any]]:
    """Generation after generation: each animal's mother is the one read just before it."""
    return [
        {"id": str(uuid.UUID(int=i + 1)), "nickname": f"a{i}", "mother": f"a{i - 1}" if i else None}
        for i in range(n)
    ]


def engine(db: Database, data: list[dict[str, Any]], **kwargs: Any) -> SyncEngine:
    db.declare(fam)
    source = Colony("fam", MemorySettings(page_size=3), data={"animals": data})
    mappers = {"animals": Mapper(db, StreamMap("animals", (Animal,), _animal))}
    return SyncEngine(db, source, mappers, batch_size=1, **kwargs)


def slow_commits(eng: SyncEngine, threads: list[str]) -> None:
    """Make every batch's transaction take a while, and note the thread it runs in."""
    commit = eng._commit

    def slowly(prep: Any) -> int:
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # the next batch is prepared meanwhile, when writes overlap
        return commit(prep)

    eng._commit = slowly  # type: ignore[method-assign]


def test_batches_are_written_behind_on_servers_and_inline_on_sqlite(
    db: Database, backend: str
) -> None:
    eng = engine(db, animals(4))
    threads: list[str] = []
    slow_commits(eng, threads)
    report = eng.run()
    assert report.ok and report.counts()["new"] == 4
    in_background = [name.startswith("limsync-write") for name in threads]
    assert in_background == [backend != "sqlite"] * 4


def test_a_lookup_into_the_streams_own_table_waits_for_the_batch_before(db: Database) -> None:
    """One record a batch, each naming the previous one as its mother: had the lookup run
    while the previous batch was still being written, no mother would be found."""
    eng = engine(db, animals(6))
    slow_commits(eng, [])
    report = eng.run()
    assert report.ok and report.counts()["quarantined"] == 0
    mothers = {r["nickname"]: r["mother_uuid"] for r in db.fetch(Animal)}
    assert mothers == {
        f"a{i}": (uuid.UUID(int=i) if i else None) for i in range(6)
    }  # fmt: skip


def test_a_failed_batch_write_fails_the_stream_and_nothing_after_it_is_written(
    db: Database,
) -> None:
    eng = engine(db, animals(5))
    commit = eng._commit
    calls: list[int] = []

    def second_fails(prep: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise SourceError("the disk is full")
        return commit(prep)

    eng._commit = second_fails  # type: ignore[method-assign]
    report = eng.run()
    assert not report.ok and "disk is full" in (report.first_error() or "")
    assert [r["nickname"] for r in db.fetch(Animal)] == ["a0"]
    assert len(calls) == 2


def test_a_key_read_again_waits_for_the_batch_that_wrote_it_first(db: Database) -> None:
    """The same record twice in a row (unordered paging): the second copy is compared with the
    ledger entry of the first, so it must wait for the batch writing that entry."""
    data = animals(3)
    data.insert(1, dict(data[0]))
    eng = engine(db, data)
    slow_commits(eng, [])
    report = eng.run()
    stream = report.streams[0]
    assert (stream.new, stream.duplicates, stream.quarantined) == (3, 1, 0)


def test_comparisons_with_the_ledger_run_ahead_on_servers_and_inline_on_sqlite(
    db: Database, backend: str
) -> None:
    eng = engine(db, animals(4))
    assert eng.run().ok
    threads: list[str] = []
    compare = eng._compare

    def noted(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return compare(*args)

    eng._compare = noted  # type: ignore[method-assign]
    report = eng.run()  # a re-sync: every batch asks the ledger
    assert report.ok and report.counts()["unchanged"] == 4
    assert len(threads) >= 4  # a batch a record, and the last (empty) batch
    assert {name.startswith("limsync-compare") for name in threads} == {backend != "sqlite"}


class Failing(Colony):
    """Fails reading its third page."""

    type_name = "overlapfailing"

    def read(self, stream: str, ctx: Any) -> Any:
        for n, page in enumerate(super().read(stream, ctx)):
            if n == 2:
                raise SourceError("the LIMS went away")
            yield page


def test_a_read_that_fails_after_whole_batches_still_lands_them(db: Database) -> None:
    """The batch compared last is finished before the error ends the stream, as each batch
    was before the comparisons ran ahead."""
    db.declare(fam)
    orphans = [{**a, "mother": None} for a in animals(6)]
    source = Failing("fam", MemorySettings(page_size=2), data={"animals": orphans})
    mappers = {"animals": Mapper(db, StreamMap("animals", (Animal,), _animal))}
    eng = SyncEngine(db, source, mappers, batch_size=2)
    report = eng.run()
    assert not report.ok and "went away" in (report.first_error() or "")
    assert sorted(r["nickname"] for r in db.fetch(Animal)) == ["a0", "a1", "a2", "a3"]
