"""limsync and the real ``datajoint`` package (2.3.5) on the same MariaDB/MySQL server.

DataJoint must read the tables limsync declares as its own (tiers, foreign keys, uuid / json /
blob values), build and populate its own tables downstream of them, and limsync must write into
tables that DataJoint declared. MySQL only: DataJoint 2.3.5 cannot use uuid columns on
PostgreSQL (contracts/datajoint.md, 3.3). Runs wherever ``LIMSYNC_TEST_MYSQL_URL`` is set, and
in CI always.
"""

from __future__ import annotations

import datetime as dt
import uuid
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from example import (
    LAB,
    SCHEMAS,
    Lab,
    Session,
    Subject,
    probe_row,
    session_row,
    subject_row,
)

from limsync.pipeline import Database, Tier, upsert
from limsync.pipeline.graph import build_graph, descendants

with warnings.catch_warnings():
    # datajoint warns on import that it found no datajoint.json; it is configured below.
    warnings.simplefilter("ignore", UserWarning)
    dj = pytest.importorskip("datajoint")

pytestmark = pytest.mark.filterwarnings("ignore:MariaDB is not officially supported")


@pytest.fixture
def backend() -> str:
    """MariaDB/MySQL only (overrides the three-backend fixture of conftest)."""
    return "mysql"


@pytest.fixture
def dj_conn(db: Database) -> Iterator[Any]:
    """A DataJoint connection configured from the test database URL.

    On teardown every schema of the test is dropped here, with foreign-key checks off, because
    DataJoint's schemas reference limsync's across databases.
    """
    url = db.url
    settings = {
        "database__host": url.host or "127.0.0.1",
        "database__port": url.port or 3306,
        "database__user": url.username or "root",
        "database__password": url.password or "",
        "database__backend": "mysql",
        "safemode": False,  # no interactive prompt on delete
    }
    with dj.config.override(**settings):
        connection = dj.Connection(
            dj.config["database.host"],
            dj.config["database.user"],
            dj.config["database.password"],
            dj.config["database.port"],
        )
        try:
            yield connection
        finally:
            connection.close()
            names = sa.inspect(db.engine).get_schema_names()
            db.drop_schemas(n for n in names if n.startswith(db.schema_prefix))


@pytest.fixture
def synced(db: Database) -> Database:
    """The example pipeline declared and filled by limsync."""
    db.declare(*SCHEMAS)
    with db.transaction() as conn:
        upsert(db, conn, Lab, [LAB])
        upsert(db, conn, Subject, [subject_row(n) for n in range(2)])
        upsert(db, conn, Session, [session_row(s, n) for s in range(2) for n in range(2)])
        upsert(db, conn, Session.Probe, [probe_row(0, 0, "probe00"), probe_row(0, 0, "probe01")])
    return db


def test_datajoint_reads_limsync_tables_as_its_own(synced: Database, dj_conn: Any) -> None:
    db = synced
    subject = dj.virtual_schema(db.physical_schema("subject"), connection=dj_conn)
    acquisition = dj.virtual_schema(db.physical_schema("acquisition"), connection=dj_conn)

    # tiers from the table names
    assert issubclass(subject.Lab, dj.Lookup)
    assert issubclass(subject.Subject, dj.Manual)
    assert issubclass(acquisition.Session, dj.Manual)
    assert issubclass(acquisition.Session.Probe, dj.Part)
    assert issubclass(acquisition.SessionStats, dj.Computed)

    # foreign keys, across schemas
    s, a = (f"`{db.physical_schema(n)}`" for n in ("subject", "acquisition"))
    assert acquisition.Session.parents() == [f"{s}.`subject`", f"{s}.`#lab`"]
    assert acquisition.Session.parents(primary=True) == [f"{s}.`subject`"]
    assert acquisition.Session.Probe.parents() == [f"{a}.`session`"]
    assert acquisition.SessionStats.parents(primary=True) == [f"{a}.`session`"]
    assert "-> [nullable]" in acquisition.Session.describe()

    # the types DataJoint recovers from the :type: comments
    heading = acquisition.Session.heading.attributes
    assert heading["session_uuid"].uuid and heading["session_uuid"].original_type == "uuid"
    assert heading["trace"].codec is not None and heading["trace"].codec.name == "blob"
    assert heading["extended_qc"].json
    assert heading["session_start"].in_key and heading["lab_name"].nullable
    assert subject.Lab.heading.attributes["lab_name"].comment == "short lab name"

    # values written by limsync come back equal through DataJoint's fetch
    for table, expected in (
        (subject.Subject, [subject_row(n) for n in range(2)]),
        (acquisition.Session, [session_row(s, n) for s in range(2) for n in range(2)]),
    ):
        got = {tuple(r[k] for k in table.primary_key): r for r in table.to_dicts()}
        assert len(got) == len(expected)
        for row in expected:
            fetched = got[tuple(row[k] for k in table.primary_key)]
            for name, value in row.items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(fetched[name], value)
                elif name == "end_time":
                    assert fetched[name] == value.replace(
                        microsecond=value.microsecond // 1000 * 1000
                    )
                elif name == "weight":
                    assert fetched[name] == Decimal(value)
                else:
                    assert fetched[name] == value, name
    probes = acquisition.Session.Probe.to_dicts(order_by="probe_name")
    assert probes[0]["probe_uuid"] == probe_row(0, 0, "probe00")["probe_uuid"]
    assert probes[0]["projection"] == "right" and probes[0]["raw_header"] == b"\x00\x01binary\xff"
    key = {"subject_uuid": uuid.UUID(int=1), "session_start": session_row(0, 0)["session_start"]}
    np.testing.assert_array_equal(
        (acquisition.Session & key).fetch1("trace"), session_row(0, 0)["trace"]
    )


def test_a_datajoint_pipeline_downstream_of_limsync(synced: Database, dj_conn: Any) -> None:
    db = synced
    acquisition = dj.virtual_schema(db.physical_schema("acquisition"), connection=dj_conn)
    analysis = dj.Schema(
        db.physical_schema("analysis"),
        context={"Session": acquisition.Session},
        connection=dj_conn,
    )

    @analysis
    class TraceStats(dj.Computed):
        definition = """
        # sum of each session's trace
        -> Session
        ---
        trace_sum: float64
        """

        def make(self, key: dict[str, Any]) -> None:
            trace = (acquisition.Session & key).fetch1("trace")
            self.insert1({**key, "trace_sum": float(np.sum(trace))})

    result = TraceStats.populate()
    assert result["success_count"] == 4 and not result["error_list"]
    first = session_row(0, 0)
    key = {"subject_uuid": first["subject_uuid"], "session_start": first["session_start"]}
    assert (TraceStats & key).fetch1("trace_sum") == pytest.approx(float(np.sum(first["trace"])))

    # limsync updates a parent row that has DataJoint children: allowed, children stay (stale)
    with db.transaction() as conn:
        cs = upsert(db, conn, Session, [session_row(0, 0, trace=np.full(4, 10.0))])
    assert cs.updated == [tuple(key.values())]
    assert (TraceStats & key).fetch1("trace_sum") == pytest.approx(float(np.sum(first["trace"])))
    (TraceStats & key).delete()
    assert TraceStats.populate()["success_count"] == 1
    assert (TraceStats & key).fetch1("trace_sum") == pytest.approx(40.0)

    # limsync sees DataJoint's table in its own graph, as a descendant of what it syncs
    stats = db.reflect("analysis", "__trace_stats")
    assert stats.tier is Tier.COMPUTED
    assert [fk.parent for fk in stats.foreign_keys] == ["acquisition.session"]
    graph = build_graph(db.specs)
    assert "analysis.__trace_stats" in descendants(graph, "subject.subject")


def test_limsync_writes_into_tables_datajoint_declared(db: Database, dj_conn: Any) -> None:
    rig = dj.Schema(db.physical_schema("rig"), connection=dj_conn)

    @rig
    class Device(dj.Manual):
        definition = """
        # a rig device
        device_uuid: uuid
        ---
        name: varchar(32)
        settings: json
        calib: <blob>
        installed: datetime(3)
        gain: float32
        raw: bytes
        note = "": varchar(64)
        """

        class Channel(dj.Part):
            definition = """
            -> master
            channel: int16
            ---
            impedance = null: float64
            """

    # reflecting the part reflects its master too
    channel = db.reflect(db.physical_schema("rig"), "device__channel", physical=True)
    device = db.spec("rig.device")
    assert (channel.tier, device.tier) == (Tier.PART, Tier.MANUAL)
    assert [fk.parent for fk in channel.foreign_keys] == ["rig.device"]
    kinds = {c.name: c.type.dj_type for c in device.columns}
    assert kinds == {
        "device_uuid": "uuid",
        "name": "varchar(32)",
        "settings": "json",
        "calib": "<blob>",
        "installed": "datetime(3)",
        "gain": "float32",
        "raw": "bytes",
        "note": "varchar(64)",
    }
    assert device.column("note").default == ""

    devices = [
        {
            "device_uuid": uuid.UUID(int=100 + n),
            "name": f"rig{n}",
            "settings": {"gain": [1, 2], "mode": None, "n": n},
            "calib": np.arange(6.0).reshape(2, 3) * n,
            "installed": dt.datetime(2024, 5, 1, 12, 0, 0, 123456),
            "gain": 0.5 + n,
            "raw": bytes([n, 0, 255]),
        }
        for n in range(3)
    ]
    channels = [
        {"device_uuid": d["device_uuid"], "channel": c, "impedance": 1.5 * c if c else None}
        for d in devices
        for c in range(2)
    ]
    with db.transaction() as conn:
        assert len(upsert(db, conn, device, devices).inserted) == 3
        assert len(upsert(db, conn, channel, channels).inserted) == 6

    got = {r["device_uuid"]: r for r in Device.to_dicts()}
    for row in devices:
        fetched = got[row["device_uuid"]]
        np.testing.assert_array_equal(fetched.pop("calib"), row["calib"])
        assert fetched == {
            **{k: v for k, v in row.items() if k != "calib"},
            "installed": dt.datetime(2024, 5, 1, 12, 0, 0, 123000),
            "note": "",
        }
    assert len(Device.Channel & {"device_uuid": uuid.UUID(int=101)}) == 2
    assert (Device.Channel & {"device_uuid": uuid.UUID(int=100), "channel": 0}).fetch1(
        "impedance"
    ) is None

    # a row DataJoint inserted, and the same values through limsync: nothing to write
    mine = {
        "device_uuid": uuid.UUID(int=200),
        "name": "dj",
        "settings": {"b": 1, "a": [True, None]},
        "calib": np.eye(3),
        "installed": dt.datetime(2024, 6, 1, 0, 0, 0, 5000),
        "gain": 0.25,
        "raw": b"raw",
        "note": "made by DataJoint",
    }
    Device.insert1(mine)
    with db.transaction() as conn:
        cs = upsert(db, conn, device, [mine, {**devices[0], "name": "renamed"}])
    assert cs.unchanged == [(uuid.UUID(int=200),)]
    assert cs.updated == [(uuid.UUID(int=100),)]
    assert (Device & {"device_uuid": uuid.UUID(int=100)}).fetch1("name") == "renamed"
