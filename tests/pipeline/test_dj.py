"""Recomputing a lab's own DataJoint tables after a sync, with the real ``datajoint`` package.

A limsync pipeline (rig -> mouse -> session) is synced by the engine from an in-memory source;
the lab's DataJoint module (written to a file and imported by path, as configured) declares two
Computed tables downstream of ``session``. After each sync the change outbox is read and
:func:`refresh_datajoint` must recompute exactly the changed keys. Runs on MariaDB/MySQL when
``LIMSYNC_TEST_MYSQL_URL`` is set (in CI always); the configuration checks run on SQLite.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, Field

from limsync.connectors.base import Stream, Streams
from limsync.errors import ConfigError
from limsync.pipeline import Database, Key, Lookup, Manual, Ref, Schema, state
from limsync.pipeline.dj import DataJointSettings, refresh_datajoint
from limsync.pipeline.populate import after_sync
from limsync.pipeline.state import state_tables
from limsync.sync.engine import SyncEngine
from limsync.sync.mapping import Mapper, StreamMap, key_from_json
from limsync.testing.memory import MemoryConnector, MemorySettings

pytestmark = pytest.mark.filterwarnings("ignore:MariaDB is not officially supported")

src = Schema("djsrc")
rigs = Schema("djrig")  # a schema the lab's module does not activate


class Rig(Lookup):
    """A recording rig."""

    __schema__ = rigs
    rig_name: Annotated[str, Key, Field(max_length=16)]
    gain: float


class Mouse(Manual):
    """A mouse."""

    __schema__ = src
    mouse: Annotated[str, Key, Field(max_length=16)]
    nickname: Annotated[str, Field(max_length=16)]


class Session(Manual):
    """A session with one value the lab's pipeline computes on."""

    __schema__ = src
    __references__ = (Ref(Mouse, key=True), Rig)
    session_id: Annotated[int, Key]
    value: float


class RigRec(BaseModel):
    name: str
    gain: float


class MouseRec(BaseModel):
    name: str
    nickname: str


class SessionRec(BaseModel):
    mouse: str
    n: int
    rig: str
    value: float


class Source(MemoryConnector):
    type_name = "djtest"
    streams = Streams(
        Stream("rigs", "rigs", RigRec, key=("name",)),
        Stream("mice", "mice", MouseRec, key=("name",)),
        Stream("sessions", "sessions", SessionRec, key=("mouse", "n")),
    )


MAPS = [
    StreamMap("rigs", (Rig,), lambda r: [(Rig, {"rig_name": r.name, "gain": r.gain})]),
    StreamMap("mice", (Mouse,), lambda r: [(Mouse, {"mouse": r.name, "nickname": r.nickname})]),
    StreamMap(
        "sessions",
        (Session,),
        lambda r: [
            (
                Session,
                {"mouse": r.mouse, "session_id": r.n, "rig_name": r.rig, "value": r.value},
            )
        ],
    ),
]

LAB_MODULE = '''
"""The lab's own DataJoint pipeline, downstream of limsync's tables."""
import datajoint as dj

src = dj.virtual_schema("{prefix}djsrc")
Session = src.Session
Rig = dj.FreeTable(dj.conn(), "`{prefix}djrig`.`#rig`")  # read without activating its schema
schema = dj.Schema("{prefix}djlab")
CALLS = []  # (table, mouse, session_id, value seen) per make()


@schema
class SessionValue(dj.Computed):
    definition = """
    -> Session
    ---
    scaled: float64
    """

    def make(self, key):
        value, rig = (src.Session & key).fetch1("value", "rig_name")
        if value < 0:
            raise ValueError(f"negative value {{value}}")
        gain = (Rig & {{"rig_name": rig}}).fetch1("gain")
        CALLS.append(("value", key["mouse"], key["session_id"], value))
        self.insert1({{**key, "scaled": value * gain}})


@schema
class ValueSquare(dj.Computed):
    definition = """
    -> SessionValue
    ---
    square: float64
    """

    def make(self, key):
        scaled = (SessionValue & key).fetch1("scaled")
        CALLS.append(("square", key["mouse"], key["session_id"], scaled))
        self.insert1({{**key, "square": scaled * scaled}})
'''


@pytest.fixture(params=["mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    """MariaDB/MySQL only, as in test_datajoint_interop: DataJoint does not run on SQLite,
    and on PostgreSQL it needs psycopg2 (not a limsync dependency) and cannot read uuids."""
    return str(request.param)


@pytest.fixture
def lab(db: Database, tmp_path: Path) -> Iterator[str]:
    """The lab's module, written to a file on sys.path; its name (refresh_datajoint imports it)."""
    if importlib.util.find_spec("datajoint") is None:
        pytest.skip("the datajoint extra is not installed")
    name = f"labpipe_{db.schema_prefix.rstrip('_')}"
    (tmp_path / f"{name}.py").write_text(LAB_MODULE.format(prefix=db.schema_prefix))
    if db.dialect == "mysql":
        # limsync's databases collate utf8mb4_bin; MariaDB refuses a foreign key from a varchar
        # of another collation, so the lab's schema is created with the same one (see
        # docs/datajoint.md).
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE `{db.schema_prefix}djlab` "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def data() -> dict[str, list[dict[str, Any]]]:
    return {
        "rigs": [{"name": "r1", "gain": 1.0}, {"name": "r2", "gain": 10.0}],
        "mice": [{"name": "m1", "nickname": "a"}, {"name": "m2", "nickname": "b"}],
        "sessions": [
            {"mouse": "m1", "n": 1, "rig": "r1", "value": 1.0},
            {"mouse": "m1", "n": 2, "rig": "r1", "value": 2.0},
            {"mouse": "m2", "n": 1, "rig": "r2", "value": 3.0},
        ],
    }


class Syncer:
    """Runs the engine and reads what it put in the outbox since the last call."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.last_id = 0

    def sync(self, records: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
        source = Source("mem", MemorySettings(), data=records)
        self.db.declare(rigs, src)
        engine = SyncEngine(self.db, source, {m.stream: Mapper(self.db, m) for m in MAPS})
        report = engine.run()
        assert report.ok, report.first_error()
        outbox = state_tables(self.db).outbox
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(outbox).where(outbox.c.id > self.last_id).order_by(outbox.c.id)
            ).mappings()
            changed: dict[str, list[Any]] = {}
            for r in rows:
                spec = self.db.spec(r["table_name"])
                key = spec.key_dict(key_from_json(spec, json.loads(r["row_key"])))
                changed.setdefault(r["table_name"], []).append((key, r["change"]))
                self.last_id = max(self.last_id, r["id"])
        return changed


def calls(name: str) -> list[tuple[str, str, int, float]]:
    """The make() calls of the lab's module so far, then forget them."""
    module = sys.modules[name]
    out = sorted(module.CALLS)
    module.CALLS.clear()
    return out


def values(name: str) -> dict[tuple[str, int], float]:
    rows = sys.modules[name].SessionValue.to_dicts()
    return {(r["mouse"], r["session_id"]): r["scaled"] for r in rows}


def test_changed_keys_are_recomputed_exactly(db: Database, lab: str) -> None:
    name = lab
    tables = [f"{name}.ValueSquare", f"{name}.SessionValue"]  # any order: parents go first
    settings = DataJointSettings(tables=tables)
    syncer = Syncer(db)
    records = data()

    # First sync: every key is new and computed once, parents before children.
    report = refresh_datajoint(db, settings, syncer.sync(records))
    assert report.ok, report.errors
    assert calls(name) == [
        ("square", "m1", 1, 1.0), ("square", "m1", 2, 2.0), ("square", "m2", 1, 30.0),
        ("value", "m1", 1, 1.0), ("value", "m1", 2, 2.0), ("value", "m2", 1, 3.0),
    ]  # fmt: skip
    value = report.tables[f"{name}.SessionValue"]
    assert (value.affected, value.deleted, value.populated) == (3, 0, 3)

    # Nothing changed: nothing to do.
    report = refresh_datajoint(db, settings, syncer.sync(records))
    assert calls(name) == [] and report.tables[f"{name}.SessionValue"].affected == 0

    # One session updated, one added: exactly those two are recomputed (with their squares).
    records["sessions"][1]["value"] = 5.0
    records["sessions"].append({"mouse": "m2", "n": 2, "rig": "r1", "value": 4.0})
    report = refresh_datajoint(db, settings, syncer.sync(records))
    assert report.ok, report.errors
    assert calls(name) == [
        ("square", "m1", 2, 5.0), ("square", "m2", 2, 4.0),
        ("value", "m1", 2, 5.0), ("value", "m2", 2, 4.0),
    ]  # fmt: skip
    value, square = (report.tables[f"{name}.{t}"] for t in ("SessionValue", "ValueSquare"))
    assert (value.affected, value.deleted, value.populated) == (2, 1, 2)
    assert (square.deleted, square.populated) == (1, 2)  # deleted leaves first: counted here
    assert values(name) == {("m1", 1): 1.0, ("m1", 2): 5.0, ("m2", 1): 30.0, ("m2", 2): 4.0}

    # An update of a mouse (a primary ancestor) makes all its sessions stale.
    records["mice"][0]["nickname"] = "renamed"
    report = refresh_datajoint(db, settings, syncer.sync(records))
    assert [c[:3] for c in calls(name) if c[0] == "value"] == [
        ("value", "m1", 1),
        ("value", "m1", 2),
    ]
    assert report.tables[f"{name}.SessionValue"].deleted == 2

    # A rig is a secondary reference of session: its update reaches the sessions using it.
    records["rigs"][1]["gain"] = 100.0
    report = refresh_datajoint(db, settings, syncer.sync(records))
    assert report.ok, report.errors
    assert [c[:3] for c in calls(name) if c[0] == "value"] == [("value", "m2", 1)]
    assert values(name)[("m2", 1)] == 300.0


def test_make_errors_are_reported_and_cleared(db: Database, lab: str) -> None:
    name = lab
    settings = DataJointSettings(tables=[f"{name}.SessionValue"])
    syncer = Syncer(db)
    records = data()
    refresh_datajoint(db, settings, syncer.sync(records))
    calls(name)

    records["sessions"][0]["value"] = -1.0
    report = refresh_datajoint(db, settings, syncer.sync(records))
    assert not report.ok
    result = report.tables[f"{name}.SessionValue"]
    assert result.deleted == 1 and result.populated == 0
    assert result.errors == [({"mouse": "m1", "session_id": 1}, "ValueError: negative value -1.0")]
    module = sys.modules[name]
    assert len(module.SessionValue.jobs.errors) == 1

    # Fixed at the source: the error job is cleared and the key computed again.
    records["sessions"][0]["value"] = 7.0
    report = refresh_datajoint(db, settings, syncer.sync(records))
    assert report.ok, report.errors
    assert report.tables[f"{name}.SessionValue"].jobs_cleared == 1
    assert calls(name) == [("value", "m1", 1, 7.0)]
    assert len(module.SessionValue.jobs.errors) == 0


def test_jobs_action_and_keep_policy(db: Database, lab: str) -> None:
    name = lab
    syncer = Syncer(db)
    records = data()
    refresh_datajoint(db, DataJointSettings(tables=[f"{name}.SessionValue"]), syncer.sync(records))
    calls(name)

    # "jobs": stale rows go, the keys wait as pending jobs; nothing is computed here.
    jobs = DataJointSettings(tables=[f"{name}.SessionValue"], action="jobs")
    records["sessions"][2]["value"] = 6.0
    report = refresh_datajoint(db, jobs, syncer.sync(records))
    result = report.tables[f"{name}.SessionValue"]
    assert (result.deleted, result.queued, result.populated) == (1, 1, 0)
    assert calls(name) == []
    table = sys.modules[name].SessionValue
    assert table.jobs.pending.keys() == [{"mouse": "m2", "session_id": 1}]
    # ... until the lab's own worker runs, without refreshing the queue itself.
    assert table.populate(reserve_jobs=True, refresh=False)["success_count"] == 1
    assert calls(name) == [("value", "m2", 1, 6.0)]

    # "keep": an update deletes nothing (the row stays, as computed before).
    keep = DataJointSettings(tables=[f"{name}.SessionValue"], on_change="keep")
    records["sessions"][2]["value"] = 8.0
    report = refresh_datajoint(db, keep, syncer.sync(records))
    assert report.tables[f"{name}.SessionValue"].deleted == 0
    assert calls(name) == [] and values(name)[("m2", 1)] == 60.0


def test_after_sync_hands_the_outbox_to_datajoint_and_reports_its_errors(
    db: Database, lab: str
) -> None:
    """The path a sync takes: the engine's outbox, consumed by populate's after_sync."""
    name = lab
    settings = DataJointSettings(tables=[f"{name}.SessionValue"])
    syncer = Syncer(db)
    records = data()
    syncer.sync(records)
    first = after_sync(db, [], datajoint=settings)
    assert first.ok, first.datajoint_errors()
    assert [c[:3] for c in calls(name)] == [("value", "m1", 1), ("value", "m1", 2),
                                            ("value", "m2", 1)]  # fmt: skip

    records["sessions"][0]["value"] = -1.0  # its make raises
    records["sessions"][2]["value"] = 9.0
    syncer.sync(records)
    report = after_sync(db, [], datajoint=settings)
    assert calls(name) == [("value", "m2", 1, 9.0)]  # exactly the changed keys
    assert not report.ok
    error = (f"{name}.SessionValue", {"mouse": "m1", "session_id": 1},
             "ValueError: negative value -1.0")  # fmt: skip
    assert report.datajoint_errors() == [error]
    (dj_table,) = report.to_dict()["outbox"]["datajoint"][0]["tables"]
    assert (dj_table["deleted"], dj_table["populated"], dj_table["error_count"]) == (2, 1, 1)
    (run,) = state.runs(db, connector="populate", limit=1)
    assert run["status"] == "failed" and "negative value -1.0" in run["error"]
    # Delivered once: the outbox is consumed.
    again = after_sync(db, [], datajoint=settings)
    assert again.outbox is not None and again.outbox.processed == 0 and calls(name) == []


# --- configuration errors (every backend, no DataJoint server needed for most)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_configuration_errors(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DataJointSettings(tables=["nowhere_module_xyz.Table"])
    assert refresh_datajoint(db, DataJointSettings(), {}).tables == {}
    with pytest.raises(ConfigError, match="not sqlite"):
        refresh_datajoint(db, settings, {})
    monkeypatch.setitem(sys.modules, "datajoint", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"limsync\[datajoint\]"):
        refresh_datajoint(db, settings, {})


def test_bad_table_paths(db: Database, tmp_path: Path) -> None:
    if importlib.util.find_spec("datajoint") is None:
        pytest.skip("the datajoint extra is not installed")
    module = tmp_path / f"notdj_{db.schema_prefix.rstrip('_')}.py"
    module.write_text(textwrap.dedent("class Plain:\n    pass\n"))
    sys.path.insert(0, str(tmp_path))
    try:
        for path, problem in (
            ("nowhere_module_xyz.Table", "cannot import 'nowhere_module_xyz'"),
            ("Table", "is not module.Class"),
            (f"{module.stem}.Missing", "has no 'Missing'"),
            (f"{module.stem}.Plain", "not a DataJoint Computed or Imported table"),
        ):
            with pytest.raises(ConfigError, match=problem):
                refresh_datajoint(db, DataJointSettings(tables=[path]), {})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module.stem, None)
