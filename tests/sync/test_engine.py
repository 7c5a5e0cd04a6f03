"""The sync engine against an in-memory source, on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from limsync.connectors.base import Cursor, Stream, Streams, StreamSettings
from limsync.pipeline import Database, Key, Lookup, Manual, Ref, Schema, ledger, state
from limsync.pipeline.locks import writer_lock
from limsync.sync.engine import SyncEngine
from limsync.sync.mapping import Emitted, Mapper, StreamMap
from limsync.sync.mapping import Lookup as FindRow
from limsync.testing.memory import MemoryConnector, MemorySettings

ref = Schema("ref")
subj = Schema("subj")


class Lab(Lookup):
    """A lab."""

    __schema__ = ref
    lab_name: Annotated[str, Key, Field(max_length=32)]


class Mouse(Manual):
    """A mouse."""

    __schema__ = subj
    __references__ = (Lab,)
    mouse_uuid: Annotated[uuid.UUID, Key]
    nickname: Annotated[str, Field(max_length=16)]
    weight_goal: float | None = None


class Tag(Manual):
    """Tags of a mouse (one row per tag: rows a record stops producing must go)."""

    __schema__ = subj
    __references__ = (Ref(Mouse, key=True),)
    tag: Annotated[str, Key, Field(max_length=16)]


class Weight(Manual):
    """A weighing, naming its mouse by nickname as Alyx does."""

    __schema__ = subj
    __references__ = (Mouse,)
    weight_id: Annotated[int, Key]
    grams: float
    measured: str


class LabRec(BaseModel):
    name: str


class MouseRec(BaseModel):
    id: uuid.UUID
    nickname: str
    lab: str
    tags: list[str] = []
    age_days: int = 0  # volatile


class WeightRec(BaseModel):
    id: int
    mouse: str
    grams: float
    measured: str


class Source(MemoryConnector):
    type_name = "memtest"
    streams = Streams(
        Stream("labs", "labs", LabRec, key=("name",)),
        Stream("mice", "mice", MouseRec, key=("id",), volatile={"age_days"}),
        Stream("weights", "weights", WeightRec, key=("id",), cursor=Cursor("measured")),
    )


def _mice(rec: Any) -> Iterable[Emitted]:
    yield Mouse, {"mouse_uuid": rec.id, "lab_name": rec.lab, "nickname": rec.nickname}
    for t in rec.tags:
        yield Tag, {"mouse_uuid": rec.id, "tag": t}


MAPS = [
    StreamMap("labs", (Lab,), lambda r: [(Lab, {"lab_name": r.name})]),
    StreamMap("mice", (Mouse, Tag), _mice),
    StreamMap(
        "weights",
        (Weight,),
        lambda r: [
            (
                Weight,
                {
                    "weight_id": r.id,
                    "mouse_uuid": FindRow(Mouse, {"nickname": r.mouse}, "mouse_uuid"),
                    "grams": r.grams,
                    "measured": r.measured,
                },
            )
        ],
    ),
]

M1, M2, M3 = (uuid.UUID(int=i) for i in (1, 2, 3))


def dataset() -> dict[str, list[dict[str, Any]]]:
    return {
        "labs": [{"name": "cortex"}, {"name": "wittenlab"}],
        "mice": [
            {"id": str(M1), "nickname": "m1", "lab": "cortex", "tags": ["a", "b"]},
            {"id": str(M2), "nickname": "m2", "lab": "cortex"},
            {"id": str(M3), "nickname": "m3", "lab": "wittenlab", "age_days": 5},
        ],
        "weights": [
            {
                "id": i,
                "mouse": f"m{1 + i % 3}",
                "grams": 20.0 + i,
                "measured": f"2026-01-{i + 1:02d}",
            }
            for i in range(9)
        ],
    }


def make_engine(db: Database, data: dict[str, Any], **stream_settings: Any) -> SyncEngine:
    settings = MemorySettings(
        page_size=4, streams={k: StreamSettings(**v) for k, v in stream_settings.items()}
    )
    source = Source("mem", settings, data=data)
    db.declare(ref, subj)
    mappers = {m.stream: Mapper(db, m) for m in MAPS}
    return SyncEngine(db, source, mappers, batch_size=5)


def totals(report: Any) -> dict[str, int]:
    c = report.counts()
    return {k: c[k] for k in ("new", "changed", "unchanged", "quarantined", "inserted", "updated")}


def test_first_sync_then_nothing_to_do(db: Database) -> None:
    data = dataset()
    engine = make_engine(db, data)
    first = engine.run()
    assert first.ok, first.first_error()
    assert totals(first) == {
        "new": 14, "changed": 0, "unchanged": 0, "quarantined": 0, "inserted": 16, "updated": 0,
    }  # fmt: skip
    assert db.count(Mouse) == 3 and db.count(Tag) == 2 and db.count(Weight) == 9
    second = make_engine(db, data).run()
    assert totals(second) == {
        "new": 0, "changed": 0, "unchanged": 14, "quarantined": 0, "inserted": 0, "updated": 0,
    }  # fmt: skip
    runs = state.runs(db, connector="mem")
    assert [r["status"] for r in runs] == ["success", "success"]


def test_changes_volatile_fields_and_dropped_rows(db: Database) -> None:
    data = dataset()
    make_engine(db, data).run()
    data["mice"][2]["age_days"] = 99  # volatile: not a change
    data["mice"][0]["nickname"] = "m1renamed"  # a change
    data["mice"][0]["tags"] = ["b"]  # the Tag row "a" must go
    report = make_engine(db, data).run()
    assert report.ok, report.first_error()
    mice = report.streams[1]
    assert (mice.stream, mice.changed, mice.unchanged) == ("mice", 1, 2)
    assert {r["nickname"] for r in db.fetch(Mouse)} == {"m1renamed", "m2", "m3"}
    assert [r["tag"] for r in db.fetch(Tag)] == ["b"]


def test_bad_records_are_quarantined_and_replayed(db: Database) -> None:
    data = dataset()
    data["mice"].append({"id": "not-a-uuid", "nickname": "x", "lab": "cortex"})  # invalid
    data["mice"].append({"id": str(uuid.UUID(int=9)), "nickname": "m9", "lab": "nolab"})  # parent
    data["mice"].append({"id": str(uuid.UUID(int=8)), "nickname": "y" * 40, "lab": "cortex"})
    data["weights"].append({"id": 99, "mouse": "ghost", "grams": 1.0, "measured": "2026-02-01"})
    engine = make_engine(db, data)
    report = engine.run()
    assert report.ok
    by_stream = {s.stream: s for s in report.streams}
    assert by_stream["mice"].quarantined == 3 and by_stream["weights"].quarantined == 1
    assert db.count(Mouse) == 3 and db.count(Weight) == 9  # the good ones landed
    from limsync.sync import admin

    items = {(i["stream"], i["stage"]) for i in admin.quarantine_list(db, "mem")}
    assert items == {
        ("mice", "validate"), ("mice", "reference"), ("mice", "row"), ("weights", "reference"),
    }  # fmt: skip
    # Fix the source of one problem (the missing lab), then replay the quarantine.
    data["labs"].append({"name": "nolab"})
    make_engine(db, data).run(streams=["labs"])
    sr_engine = make_engine(db, data)
    from limsync.sync.report import StreamReport

    raws = [admin.quarantine_show(db, "mem", "mice", i["source_key"])["raw"]
            for i in admin.quarantine_list(db, "mem", "mice")]  # fmt: skip
    sr = StreamReport("mice")
    sr_engine.replay("mice", raws, sr, run_id=0)
    assert sr.new == 1 and sr.quarantined == 2
    assert db.count(Mouse) == 4


def test_bad_rows_quarantine_their_record_with_the_first_bad_rows_error(db: Database) -> None:
    """Rows are validated a table at a time; each bad record still gets its own first error."""
    from limsync.errors import RowError
    from limsync.pipeline.validation import validate_row
    from limsync.sync import admin

    data = dataset()
    long_tag, long_name = "t" * 20, "n" * 20
    data["mice"] += [
        {"id": str(uuid.UUID(int=7)), "nickname": long_name, "lab": "cortex", "tags": [long_tag]},
        {"id": str(uuid.UUID(int=8)), "nickname": "m8", "lab": "cortex", "tags": ["ok", long_tag]},
    ]
    report = make_engine(db, data).run(streams=["labs", "mice"])
    assert report.ok and report.streams[1].quarantined == 2

    def error(table: Any, row: dict[str, Any]) -> str:
        with pytest.raises(RowError) as info:
            validate_row(table.spec, row)
        return str(info.value)

    found = {i["source_key"]: (i["stage"], i["error"]) for i in admin.quarantine_list(db, "mem")}
    u7, u8 = uuid.UUID(int=7), uuid.UUID(int=8)
    assert found == {
        f'["{u7}"]': (
            "row",
            error(Mouse, {"mouse_uuid": u7, "lab_name": "cortex", "nickname": long_name}),
        ),
        f'["{u8}"]': ("row", error(Tag, {"mouse_uuid": u8, "tag": long_tag})),
    }
    assert db.count(Mouse) == 3 and db.count(Tag) == 2  # the good ones landed


def test_delete_policies(db: Database) -> None:
    data = dataset()
    make_engine(db, data).run()
    del data["weights"][0]
    flagged = make_engine(db, data).run()
    assert flagged.streams[2].gone == 1 and db.count(Weight) == 9  # flag: rows stay
    deleted = make_engine(db, data, weights={"delete_policy": "delete"}).run()
    assert deleted.streams[2].deleted == 1 and db.count(Weight) == 8
    # Most weighings vanish at once: refused above the threshold, nothing deleted.
    data["weights"] = data["weights"][:2]
    refused = make_engine(db, data, weights={"delete_policy": "delete"}).run()
    assert not refused.ok and "threshold" in (refused.streams[2].error or "")
    assert db.count(Weight) == 8
    forced = make_engine(db, data, weights={"delete_policy": "delete"}).run(force_delete=True)
    assert forced.ok and db.count(Weight) == 2


def test_gone_records_beside_new_and_returning_ones(db: Database) -> None:
    """The ledger is compared key by key whenever the scan did not see all of it: a record that
    vanished is found when others arrive (new, quarantined) in the same scan, and a record
    flagged gone that comes back counts as seen."""
    data = dataset()
    make_engine(db, data).run()
    gone = data["weights"].pop(0)
    data["weights"].append({"id": 60, "mouse": "m2", "grams": 30.0, "measured": "2026-02-01"})
    data["weights"].append({"id": 61, "mouse": "m2", "grams": "heavy", "measured": "2026-02-02"})
    report = make_engine(db, data).run()
    weights = report.streams[2]
    assert (weights.new, weights.quarantined, weights.gone) == (1, 1, 1)
    assert make_engine(db, data).run().streams[2].gone == 1  # still flagged, still missing
    data["weights"].append(gone)
    back = make_engine(db, data).run().streams[2]
    assert (back.gone, back.changed, back.unchanged) == (0, 1, 9)
    assert make_engine(db, data).run().streams[2].gone == 0


def test_deleting_a_parent_cascades(db: Database) -> None:
    data = dataset()
    make_engine(db, data).run()
    data["mice"] = [m for m in data["mice"] if m["id"] != str(M1)]
    data["weights"] = [w for w in data["weights"] if w["mouse"] != "m1"]
    report = make_engine(db, data, mice={"delete_policy": "delete", "delete_threshold": 0.5}).run()
    assert report.ok, report.first_error()
    assert db.count(Mouse) == 2 and db.count(Tag) == 0 and db.count(Weight) == 6


def test_dry_run_changes_nothing(db: Database) -> None:
    data = dataset()
    plan = make_engine(db, data).run(dry_run=True)
    assert plan.counts()["inserted"] == 16
    assert db.count(Mouse) == 0
    assert make_engine(db, data).run().counts()["inserted"] == 16


def test_incremental_cursor(db: Database) -> None:
    data = dataset()
    engine = make_engine(db, data)
    engine.run()
    data["weights"].append({"id": 50, "mouse": "m2", "grams": 30.0, "measured": "2026-03-01"})
    engine2 = make_engine(db, data)
    report = engine2.run(full=False, streams=["weights"])
    # The boundary record is read again (inclusive cursor) and recognised as unchanged.
    assert report.streams[0].read == 2 and report.streams[0].new == 1
    assert engine2.connector.reads[-1] == ("weights", False, "2026-01-09")  # type: ignore[attr-defined]


def test_second_writer_is_refused(db: Database) -> None:
    data = dataset()
    with writer_lock(db, "sync:mem"):
        report = make_engine(db, data).run()
    assert report.skipped and "held" in (report.error or "")
    assert db.count(Mouse) == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_ambiguous_lookup_is_quarantined(db: Database) -> None:
    data = dataset()
    data["mice"][2]["nickname"] = "m1"  # two labs, one nickname
    report = make_engine(db, data).run()
    weights = report.streams[2]
    assert weights.quarantined == 6  # weighings of "m1" cannot be placed
    from limsync.sync import admin

    errors = {i["error"] for i in admin.quarantine_list(db, "mem", "weights")}
    assert any("ambiguous" in e for e in errors)


def test_unchanged_resync_reads_no_ledger_entry(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged re-sync asks the ledger only which keys are not present with their hash,
    and the answer is empty: no record's entry travels from the database."""
    data = dataset()
    assert make_engine(db, data).run().ok
    answers: list[tuple[int, dict[str, Any]]] = []
    compare = ledger.mismatches

    def spy(*args: Any) -> dict[str, Any]:
        out = compare(*args)
        answers.append((len(args[4]), out))
        return out

    def per_record_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an unchanged re-sync read ledger entries record by record")

    monkeypatch.setattr(ledger, "mismatches", spy)
    monkeypatch.setattr(ledger, "states", per_record_read)
    monkeypatch.setattr(ledger, "lookup", per_record_read)
    second = make_engine(db, data).run()
    assert totals(second) == {
        "new": 0, "changed": 0, "unchanged": 14, "quarantined": 0, "inserted": 0, "updated": 0,
    }  # fmt: skip
    assert sum(n for n, _ in answers) == 14  # every key was asked about, in batches of 5
    assert len(answers) >= 3 and all(out == {} for _, out in answers)


def test_duplicate_keys_on_first_sync_and_resync(db: Database) -> None:
    """A key read twice in one scan: counted when its content is the same, quarantined when it
    differs, whether the first one is in the same batch or an earlier one, new or unchanged."""
    data = dataset()
    m4, m5 = (str(uuid.UUID(int=i)) for i in (4, 5))
    mice = data["mice"]
    data["mice"] = [
        *mice,
        {"id": m4, "nickname": "m4", "lab": "cortex"},
        dict(mice[0]),  # M1 again, the same, in the first batch of five
        {"id": m5, "nickname": "m5", "lab": "cortex"},
        {**mice[1], "nickname": "m2b"},  # M2 again, different, in the second batch
        dict(mice[2]),  # M3 again, the same, in the second batch
    ]
    for run in range(2):
        report = make_engine(db, data).run()
        mice_report = next(s for s in report.streams if s.stream == "mice")
        assert (mice_report.duplicates, mice_report.quarantined) == (2, 1), run
        assert mice_report.new + mice_report.unchanged == 5, run
        assert (mice_report.new, mice_report.changed) == ((5, 0) if run == 0 else (0, 0)), run
        assert db.count(Mouse) == 5


def test_a_first_load_asks_the_ledger_only_about_keys_read_again(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger holds nothing of a stream before its first load: keys read for the first
    time are new without asking; a key read again is asked about (its first copy is stored)."""
    data = dataset()
    data["mice"] = [*data["mice"], dict(data["mice"][0])]  # M1 again, in the same batch
    asked: list[list[str]] = []
    compare = ledger.mismatches

    def spy(*args: Any) -> Any:
        asked.append(sorted(args[4]))
        return compare(*args)

    monkeypatch.setattr(ledger, "mismatches", spy)
    report = make_engine(db, data).run()
    mice = next(s for s in report.streams if s.stream == "mice")
    assert (mice.new, mice.duplicates, mice.quarantined) == (3, 1, 0)
    assert asked == [[ledger.key_text((M1,))]]
    asked.clear()
    assert make_engine(db, data).run().counts()["unchanged"] == 14  # later runs ask about all
    assert sum(len(a) for a in asked) == 14
