"""Tests for limsync.pipeline.ddl and Database.declare: DataJoint-compatible DDL per dialect.

The MySQL and PostgreSQL DDL of the example pipeline is compared with golden files (compiled
without a server); set ``LIMSYNC_UPDATE_GOLDEN=1`` to rewrite them after a deliberate change, and
review the diff. The live tests declare on every backend and read the catalog back.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import sqlalchemy as sa
from example import SCHEMAS, TABLES, Lab, Session, SessionStats, Subject, acquisition
from pydantic import Field
from sqlalchemy.schema import CreateIndex, CreateTable, SetColumnComment, SetTableComment

from limsync.errors import DeclarationError, SchemaMismatchError
from limsync.pipeline import Database, Key, Manual, Schema, upsert
from limsync.pipeline.ddl import column_comment, enum_type_name, server_default
from limsync.pipeline.reflect import differences

GOLDEN = Path(__file__).parent / "golden"
OFFLINE_URLS = {
    "mysql": "mysql+pymysql://user:secret@127.0.0.1:1/none",
    "postgresql": "postgresql+psycopg://user:secret@127.0.0.1:1/none",
}


def compiled_ddl(dialect: str) -> str:
    """The example pipeline's CREATE statements, compiled for ``dialect`` without a server."""
    db = Database(OFFLINE_URLS[dialect], schema_prefix="lab_")
    for table in TABLES:
        db.register(table.spec)
    statements = []
    for table in TABLES:
        sa_table = db.table(table.spec)
        statements.append(str(CreateTable(sa_table).compile(dialect=db.engine.dialect)).strip())
        for index in sorted(sa_table.indexes, key=lambda i: str(i.name)):
            statements.append(str(CreateIndex(index).compile(dialect=db.engine.dialect)).strip())
        if dialect == "postgresql":  # comments are separate statements there
            comments: list[Any] = [SetTableComment(sa_table)]
            comments += [SetColumnComment(c) for c in sa_table.columns if c.comment]
            statements += [str(c.compile(dialect=db.engine.dialect)).strip() for c in comments]
    return ";\n\n".join(statements) + ";\n"


@pytest.mark.parametrize("dialect", ["mysql", "postgresql"])
def test_ddl_matches_the_golden_file(dialect: str) -> None:
    path = GOLDEN / f"example_{dialect}.sql"
    text = compiled_ddl(dialect)
    if os.environ.get("LIMSYNC_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_mysql_ddl_follows_the_datajoint_conventions() -> None:
    """The checklist of contracts/datajoint.md, spelled out (the golden file shows the rest)."""
    ddl = compiled_ddl("mysql")
    tables = {
        m.group(1).strip("`"): m.group(0)
        for m in re.finditer(r"CREATE TABLE \S+\.(\S+) \(.*?;", ddl, re.S)
    }
    assert set(tables) == {"#lab", "subject", "session", "session__probe", "__session_stats"}
    for statement in tables.values():
        assert "ENGINE=InnoDB" in statement
        assert "CHARSET=utf8mb4" in statement
    subject, session = tables["subject"], tables["session"]
    assert "subject_uuid BINARY(16) NOT NULL COMMENT ':uuid:LIMS id'" in subject
    assert "sex ENUM('M','F','U') NOT NULL COMMENT ':enum(''M'', ''F'', ''U''):' DEFAULT 'U'" in (
        subject
    )
    assert "json_extra JSON COMMENT ':json:'" in subject
    assert "weight NUMERIC(6, 2) COMMENT ':decimal(6,2):'" in subject
    assert "alive TINYINT NOT NULL COMMENT ':bool:' DEFAULT 1" in subject
    assert "COMMENT='Experimental subject (synced from the LIMS)'" in subject
    assert "trace LONGBLOB COMMENT ':<blob>:'" in session
    assert "session_start DATETIME(6) NOT NULL COMMENT ':datetime(6):'" in session
    assert "end_time DATETIME(3) COMMENT ':datetime(3):'" in session
    assert "rig_temperature FLOAT COMMENT ':float32:'" in session
    assert "n_trials INTEGER COMMENT ':int32:'" in session
    # foreign keys: the parent's full key, across schemas, ON UPDATE CASCADE ON DELETE RESTRICT
    assert (
        "CONSTRAINT session_ibfk_1 FOREIGN KEY(subject_uuid) REFERENCES lab_subject.subject "
        "(subject_uuid) ON DELETE RESTRICT ON UPDATE CASCADE"
    ) in session
    assert (
        "FOREIGN KEY(subject_uuid, session_start) REFERENCES lab_acquisition.session "
        "(subject_uuid, session_start) ON DELETE RESTRICT ON UPDATE CASCADE"
    ) in tables["__session_stats"]
    assert "REFERENCES lab_subject.`#lab` (lab_name)" in session


def test_comments_enum_names_and_defaults() -> None:
    uuid_col = Subject.spec.column("subject_uuid")
    assert column_comment(uuid_col, "mysql") == ":uuid:LIMS id"
    # DataJoint 2.3.5 cannot read uuid-marked columns on PostgreSQL: char(36) there.
    assert column_comment(uuid_col, "postgresql") == ":char(36):LIMS id"
    sex = Subject.spec.column("sex").type
    # DataJoint's own rule: md5 of the sorted members, joined by "_"
    assert enum_type_name(sex) == "enum_" + hashlib.md5(b"F_M_U").hexdigest()[:8]
    probe = Session.Probe.spec
    assert server_default(probe.column("projection"), "mysql") == "left"  # an enum.Enum default
    assert str(server_default(probe.column("n_channels"), "mysql")) == "384"
    assert str(server_default(Subject.spec.column("alive"), "postgresql")) == "true"
    assert server_default(Subject.spec.column("json_extra"), "mysql") is None


# --- live: every backend -----------------------------------------------------------------------


def test_declare_creates_everything_and_is_idempotent(db: Database) -> None:
    created = db.declare(*SCHEMAS)
    # parents first, whatever the order of the schemas
    assert created.index("subject.#lab") < created.index("subject.subject")
    assert created.index("subject.subject") < created.index("acquisition.session")
    assert created.index("acquisition.session") < created.index("acquisition.session__probe")
    assert set(created) == {t.spec.qualname for t in TABLES}
    assert db.declare(*SCHEMAS) == []
    # a fresh process (a new Database) finds everything in place too
    assert Database(db.url, schema_prefix=db.schema_prefix).declare(*SCHEMAS) == []
    for table in TABLES:
        reflected = db.reflect(table.spec.schema, table.spec.name)
        assert reflected is table.spec  # the declared spec wins over a reflection
    for table in TABLES:
        fresh = Database(db.url, schema_prefix=db.schema_prefix)
        existing = fresh.reflect(table.spec.schema, table.spec.name)
        assert differences(table.spec, existing, db.dialect) == []
        assert existing.primary_key == table.spec.primary_key
        assert {fk.parent for fk in existing.foreign_keys} == {
            fk.parent for fk in table.spec.foreign_keys
        }


def test_a_new_table_under_existing_parents_is_created(db: Database) -> None:
    db.declare(SCHEMAS[0])
    fresh = Database(db.url, schema_prefix=db.schema_prefix)
    # The parents exist and are only checked; the children still need their SQLAlchemy tables.
    assert fresh.declare(*SCHEMAS) == [
        "acquisition.session",
        "acquisition.__session_stats",
        "acquisition.session__probe",
    ]


def test_declaring_a_child_without_its_parent_is_a_clear_error(db: Database) -> None:
    with pytest.raises(DeclarationError, match=r"references subject\.subject, which this database"):
        db.declare(acquisition)


def _evolving(version: int) -> type[Manual]:
    """The same table ("evo.sample") declared in three versions."""
    schema = Schema("evo")
    if version == 1:

        class Sample(Manual):
            __schema__ = schema
            sample_id: Annotated[int, Key]
            label: Annotated[str, Field(max_length=16, description="100% \\ 'raw': x")]
            mass: float | None = None
            retired: bool = False

        return Sample
    if version == 2:

        class Sample(Manual):  # type: ignore[no-redef]
            __schema__ = schema
            sample_id: Annotated[int, Key]
            label: Annotated[str, Field(max_length=16, description="100% \\ 'raw': x")]
            mass: float | None = None
            retired: bool = False
            # new nullable columns: addable by migrate=True
            stain: Literal["dapi", "gfp"] | None = None
            note: (
                Annotated[str, Field(max_length=40, description="50% of it's \\ odd: yes")] | None
            ) = "n/a"

        return Sample

    class Sample(Manual):  # type: ignore[no-redef]
        __schema__ = schema
        sample_id: Annotated[str, Key, Field(max_length=8)]  # type changed
        label: Annotated[str, Field(max_length=32)]  # length changed
        mass: float  # no longer nullable
        # "retired" removed
        batch: int  # new NOT NULL column: cannot be migrated

    return Sample


def test_a_changed_declaration_lists_every_difference(db: Database) -> None:
    db.declare(_evolving(1))
    with pytest.raises(SchemaMismatchError) as info:
        Database(db.url, schema_prefix=db.schema_prefix).declare(_evolving(3), migrate=True)
    diffs = info.value.differences
    assert info.value.table == "evo.sample"
    expected = [
        "column sample_id is ",
        "column mass is nullable, declared NOT NULL",
        "column batch is missing",
        "column retired exists but is not declared",
    ]
    if db.dialect != "sqlite":  # SQLite keeps no lengths
        expected.append("column label is varchar(16), declared varchar(32)")
    for text in expected:
        assert any(d.startswith(text) for d in diffs), (text, diffs)
    assert len(diffs) == len(expected)
    assert all(d in str(info.value) for d in diffs)


def test_new_nullable_columns_need_migrate(db: Database) -> None:
    db.declare(_evolving(1))
    with db.transaction() as conn:
        upsert(db, conn, _evolving(1), [{"sample_id": 1, "label": "a"}])
    v2 = _evolving(2)
    fresh = Database(db.url, schema_prefix=db.schema_prefix)
    with pytest.raises(SchemaMismatchError, match="can be added with migrate=True") as info:
        fresh.declare(v2)
    assert len(info.value.differences) == 2
    assert fresh.declare(v2, migrate=True) == ["evo.sample"]
    assert fresh.declare(v2) == []
    # The old row got the new columns' defaults (NULL or the declared default).
    assert fresh.fetch(v2) == [
        {"sample_id": 1, "label": "a", "mass": None, "retired": False, "stain": None, "note": "n/a"}
    ]
    with fresh.transaction() as conn:
        cs = upsert(fresh, conn, v2, [{"sample_id": 2, "label": "b", "stain": "gfp"}])
    assert cs.inserted == [(2,)]
    assert fresh.fetch(v2)[1]["stain"] == "gfp"
    if db.dialect != "sqlite":
        reflected = Database(db.url, schema_prefix=db.schema_prefix).reflect("evo", "sample")
        assert reflected.column("note").comment == "50% of it's \\ odd: yes"
        assert reflected.column("label").comment == "100% \\ 'raw': x"
        assert reflected.column("stain").type.values == ("dapi", "gfp")


# --- live: catalog details per server ------------------------------------------------------------


def _scalar(db: Database, sql: str, *params: object) -> object:
    with db.engine.connect() as conn:
        return conn.exec_driver_sql(sql, params).scalar()


@pytest.mark.parametrize("backend", ["postgres"])
def test_postgresql_comments_enum_types_and_fk_indexes(db: Database) -> None:
    db.declare(*SCHEMAS)
    schema = db.physical_schema("subject")
    subject = f'"{schema}".subject'
    assert _scalar(db, "SELECT obj_description(%s::regclass, 'pg_class')", subject) == (
        "Experimental subject (synced from the LIMS)"
    )
    comments = {
        c["name"]: c["comment"] for c in sa.inspect(db.engine).get_columns("subject", schema=schema)
    }
    assert comments["subject_uuid"] == ":char(36):LIMS id"
    assert comments["sex"] == ":enum('M', 'F', 'U'):"
    assert comments["json_extra"] == ":json:"
    assert comments["weight"] == ":decimal(6,2):"
    enum_name = enum_type_name(Subject.spec.column("sex").type)
    with db.engine.connect() as conn:
        members = [
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
                "JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = %s AND t.typname = %s ORDER BY e.enumsortorder",
                (schema, enum_name),
            )
        ]
        udt = conn.exec_driver_sql(
            "SELECT udt_schema, udt_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'subject' AND column_name = 'sex'",
            (schema,),
        ).one()
        indexes = {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'subject'",
                (schema,),
            )
        }
        rules = conn.exec_driver_sql(
            "SELECT update_rule, delete_rule FROM information_schema.referential_constraints "
            "WHERE constraint_schema = %s",
            (db.physical_schema("acquisition"),),
        ).all()
    assert members == ["M", "F", "U"]
    assert tuple(udt) == (schema, enum_name, "USER-DEFINED")
    assert any("(lab_name)" in d for d in indexes)  # DataJoint indexes FK columns on PG
    # session -> subject, session -> lab, stats -> session, probe -> session
    assert rules == [("CASCADE", "RESTRICT")] * 4


@pytest.mark.parametrize("backend", ["mysql"])
def test_mysql_catalog(db: Database) -> None:
    db.declare(*SCHEMAS)
    schema = db.physical_schema("acquisition")
    with db.engine.connect() as conn:
        engines = {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT engine FROM information_schema.tables WHERE table_schema = %s", (schema,)
            )
        }
        rules = set(
            conn.exec_driver_sql(
                "SELECT update_rule, delete_rule FROM information_schema.referential_constraints "
                "WHERE constraint_schema = %s",
                (schema,),
            ).all()
        )
        comments = dict(
            conn.exec_driver_sql(
                "SELECT column_name, column_comment FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'session'",
                (schema,),
            ).all()
        )
        types = dict(
            conn.exec_driver_sql(
                "SELECT column_name, column_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'session'",
                (schema,),
            ).all()
        )
    assert engines == {"InnoDB"}
    assert rules == {("CASCADE", "RESTRICT")}
    assert comments["session_uuid"] == ":uuid:"
    assert comments["trace"] == ":<blob>:"
    assert comments["extended_qc"] == ":json:"
    assert types["session_uuid"] == "binary(16)"
    assert types["session_start"] == "datetime(6)"
    assert types["trace"] == "longblob"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_names_and_enforced_foreign_keys(db: Database) -> None:
    db.declare(*SCHEMAS)
    names = set(sa.inspect(db.engine).get_table_names())
    prefix = db.schema_prefix
    assert f"{prefix}subject.#lab" in names and f"{prefix}acquisition.session__probe" in names
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.exec_driver_sql(
            f'INSERT INTO "{prefix}subject.subject" (subject_uuid, lab_name, nickname, sex, alive) '
            "VALUES ('x', 'nolab', 'n', 'U', 1)"
        )
    assert db.count(Lab) == 0 and db.count(SessionStats) == 0
