"""Declarative mappings from the configuration: values, checks, and syncs on every backend."""

from __future__ import annotations

import datetime as dt
import decimal
import sys
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field

from limsync.config.mappings import ColumnSource
from limsync.config.settings import Settings, load_settings
from limsync.connectors import registry
from limsync.connectors.base import Stream, Streams
from limsync.errors import ConfigError
from limsync.pipeline import Database
from limsync.sync import admin
from limsync.sync.declarative import MappingError, compile_value, stream_map
from limsync.sync.runner import prepare, sync
from limsync.testing.memory import MemoryConnector

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "legacy"))
import legacy_pipeline as lp  # found by name, as `pipelines` does

# --- values, without a database


def value(spec: dict[str, Any], data: dict[str, Any], nulls: frozenset[str] = frozenset()) -> Any:
    return compile_value(ColumnSource.model_validate(spec), "col", nulls)(data)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("03.02.2020", dt.date(2020, 2, 3)),  # the first format
        ("02/05/2020", dt.date(2020, 2, 5)),  # the second format
        ("2020-02-07", dt.date(2020, 2, 7)),  # ISO 8601 is always understood
        ("43831", dt.date(2020, 1, 1)),  # an Excel serial number
        ("43831.75", dt.date(2020, 1, 1)),
        ("  ", None),  # blank: null
    ],
)
def test_dates_in_several_formats(text: str, expected: dt.date | None) -> None:
    spec = {"from": "DOB", "parse": "date", "formats": ["%d.%m.%Y", "%m/%d/%Y"]}
    assert value(spec, {"DOB": text}) == expected


def test_datetimes_and_excel_fractions() -> None:
    spec = {"from": "t", "parse": "datetime", "formats": ["%d.%m.%Y %H:%M"]}
    assert value(spec, {"t": "01.03.2020 10:05"}) == dt.datetime(2020, 3, 1, 10, 5)
    assert value(spec, {"t": "43831.5"}) == dt.datetime(2020, 1, 1, 12, 0)
    assert value(spec, {"t": "2020-03-01T08:00:00"}) == dt.datetime(2020, 3, 1, 8, 0)


def test_an_unparseable_value_names_column_and_value() -> None:
    spec = {"from": "DOB", "parse": "date", "formats": ["%d.%m.%Y"]}
    with pytest.raises(MappingError, match=r"column col: '31\.02\.2020' is not a date \(%d\.%m"):
        value(spec, {"DOB": "31.02.2020"})


def test_value_maps_defaults_and_nulls() -> None:
    spec = {"from": "Sex", "map": {"f": "F", "m": "M"}, "ignore_case": True, "default": "U"}
    assert value(spec, {"Sex": " F "}) == "F"
    assert value(spec, {"Sex": ""}) == "U"
    assert value(spec, {"Sex": "NA"}, frozenset({"NA"})) == "U"
    with pytest.raises(MappingError, match=r"column col: 'x' is not in its map \('f', 'm'\)"):
        value(spec, {"Sex": "x"})
    exact = {"from": "Sex", "map": {"f": "F"}}
    with pytest.raises(MappingError):
        value(exact, {"Sex": "F"})


def test_numbers_and_booleans() -> None:
    assert value({"from": "n", "parse": "int"}, {"n": "12.0"}) == 12
    with pytest.raises(MappingError, match="is not an integer"):
        value({"from": "n", "parse": "int"}, {"n": "12.5"})
    comma = {"from": "w", "parse": "decimal", "decimal_comma": True}
    assert value(comma, {"w": "1.234,5"}) == decimal.Decimal("1234.5")
    assert value({"from": "w", "parse": "float"}, {"w": "21.5"}) == 21.5
    with pytest.raises(MappingError, match="is not a number"):
        value({"from": "w", "parse": "decimal"}, {"w": "abc"})
    assert value({"from": "b", "parse": "bool"}, {"b": "Yes"}) is True
    assert value({"from": "b", "parse": "bool"}, {"b": "0"}) is False


def test_templates_constants_and_uuids() -> None:
    template = {"template": "{Animal ID}-{Date}"}
    assert value(template, {"Animal ID": " A1 ", "Date": "2020"}) == "A1-2020"
    assert value(template, {"Animal ID": "A1", "Date": ""}) is None  # no key from half a key
    assert value({"value": True}, {}) is True
    five = value({"from": "id", "parse": "uuid5"}, {"id": "A1"})
    assert five == uuid.uuid5(uuid.NAMESPACE_URL, "A1")
    assert value({"from": "a.b"}, {"a": {"b": 3}}) == 3  # a dotted path into nested JSON


def test_a_missing_field_fails_unless_optional() -> None:
    with pytest.raises(MappingError, match="the record has no field 'Nope'"):
        value({"from": "Nope"}, {"Sex": "f"})
    assert value({"from": "Nope", "optional": True, "default": 1}, {}) == 1


def test_cleaning_of_fields_and_template_parts() -> None:
    """Trimming, nulls (the column's own replace the table's) and non-text values, for a plain
    field and the fields of a template."""
    na = frozenset({"NA"})
    assert value({"from": "a"}, {"a": " x "}) == "x"
    assert value({"from": "a", "trim": False}, {"a": " x "}) == " x "
    assert value({"from": "a", "trim": False}, {"a": " "}) == " "
    assert value({"from": "a"}, {"a": " NA "}, na) is None
    assert value({"from": "a", "nulls": ["-"]}, {"a": "NA"}, na) == "NA"
    assert value({"from": "a", "nulls": ["-"], "default": 0}, {"a": "-"}, na) == 0
    assert value({"from": "a", "default": 0}, {"a": None}) == 0
    assert value({"from": "a", "parse": "int"}, {"a": 7}) == 7  # not text: not cleaned
    assert value({"from": "a", "optional": True}, {}) is None
    template = {"template": "{a}/{b}"}
    assert value(template, {"a": " 1 ", "b": 2}) == "1/2"
    assert value({**template, "trim": False}, {"a": " 1 ", "b": 2}) == " 1 /2"
    assert value(template, {"a": "NA", "b": 2}, na) is None
    assert value(template, {"a": None, "b": 2}) is None
    assert value({**template, "default": "?"}, {"a": "1", "b": ""}) == "?"
    assert value({**template, "optional": True}, {"a": "1"}) is None
    with pytest.raises(MappingError, match=r"no field 'b' \(template '\{a\}/\{b\}'\)"):
        value(template, {"a": "1"})


# --- configuration errors, with their places


@pytest.mark.parametrize(
    ("column", "place"),
    [
        ('sex = { from = "Sex", map = {} }', "columns.sex.map: Value error, an empty map"),
        ('sex = { from = "Sex", value = "U" }', "columns.sex: Value error, give exactly one"),
        ('sex = { from = "Sex", formats = ["%d"] }', "columns.sex: Value error, formats belong"),
        ('sex = { from = "Sex", parse = "colour" }', "columns.sex.parse: Input should be"),
        ('sex = { template = "{}" }', "columns.sex.template: Value error, empty {}"),
        ('Sex = "Sex"', "columns: Value error, 'Sex': target columns are lower snake case"),
        ('sex = { lookup = "colony.lab" }', "columns.sex: Value error, a lookup needs match"),
    ],
)
def test_config_errors_name_their_place(
    tmp_path: Path, legacy_type: None, column: str, place: str
) -> None:
    path = tmp_path / "limsync.toml"
    path.write_text(
        '[connectors.legacy]\ntype = "legacytest"\n'
        '[[mappings.legacy.subjects]]\ntable = "colony.subject"\n'
        f"[mappings.legacy.subjects.columns]\n{column}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"mappings.legacy.subjects[0].{place}" in str(info.value)


def test_mappings_of_an_unknown_connector(tmp_path: Path, legacy_type: None) -> None:
    path = tmp_path / "limsync.toml"
    path.write_text('[[mappings.ghost.subjects]]\ntable = "a.b"\ncolumns = { x = "X" }\n')
    with pytest.raises(ConfigError, match=r"mappings for unknown connector\(s\) ghost"):
        load_settings(path)


def test_one_table_without_a_list_is_accepted(tmp_path: Path, legacy_type: None) -> None:
    path = tmp_path / "limsync.toml"
    path.write_text(
        '[connectors.legacy]\ntype = "legacytest"\n'
        '[mappings.legacy.labs]\ntable = "colony.lab"\ncolumns = { lab_name = "Name" }\n'
    )
    settings = load_settings(path)
    assert settings.mappings["legacy"]["labs"][0].table == "colony.lab"


# --- a source, a pipeline and syncs


class LabRow(BaseModel):
    """A closed model: source fields named in the mapping are checked against it."""

    name: str = Field(alias="Name")
    institute: str = Field("", alias="Institute")


class SubjectRow(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    animal_id: str = Field(alias="Animal ID")


class WeighingRow(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    animal_id: str = Field(alias="Animal ID")
    date: str = Field(alias="Date")


class Legacy(MemoryConnector):
    type_name = "legacytest"
    streams = Streams(
        Stream("labs", "labs", LabRow, key=("name",)),
        Stream("subjects", "subjects", SubjectRow, key=("animal_id",)),
        Stream("weighings", "weighings", WeighingRow, key=("animal_id", "date")),
    )
    DATA: ClassVar[dict[str, list[dict[str, Any]]]] = {}

    def __init__(self, name: str, settings: Any, *, session: Any = None) -> None:
        super().__init__(name, settings, data=self.DATA, session=session)


@pytest.fixture
def legacy_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ``legacytest`` connector type known, as an installed plugin would be."""
    real = registry.get
    monkeypatch.setattr(registry, "get", lambda t: Legacy if t == "legacytest" else real(t))
    monkeypatch.setattr(Legacy, "DATA", {})


MAPPINGS: dict[str, Any] = {
    "labs": [{"table": "colony.lab", "columns": {"lab_name": "Name", "institution": "Institute"}}],
    "subjects": [
        {
            "table": "colony.subject",
            "nulls": ["NA"],
            "columns": {
                "subject": "Animal ID",
                "lab_name": {"lookup": "colony.lab", "match": {"lab_name": "Lab"}},
                "sex": {
                    "from": "Sex",
                    "map": {"f": "F", "m": "M", "?": "U"},
                    "default": "U",
                    "ignore_case": True,
                },
                "date_of_birth": {"from": "DOB", "parse": "date", "formats": ["%d.%m.%Y"]},
                "notes": {"from": "Notes", "default": ""},
                "active": {"value": True},
            },
        }
    ],
    "weighings": [
        {
            "table": "colony.weighing",
            "columns": {
                "subject": "Animal ID",
                "weighed_at": {
                    "from": "Date",
                    "parse": "datetime",
                    "formats": ["%d.%m.%Y %H:%M"],
                },
                "weight": {"from": "Weight (g)", "parse": "decimal", "decimal_comma": True},
                "weighing_id": {"template": "{Animal ID}/{Date}"},
            },
        }
    ],
}


def subject(
    aid: str, lab: str = "cortex", sex: str = "f", dob: str = "", **kw: str
) -> dict[str, str]:
    return {"Animal ID": aid, "Lab": lab, "Sex": sex, "DOB": dob, "Notes": "", **kw}


def weighing(aid: str, date: str, grams: str) -> dict[str, str]:
    return {"Animal ID": aid, "Date": date, "Weight (g)": grams}


DATA = {
    "labs": [{"Name": "cortex", "Institute": "UCL"}, {"Name": "witten", "Institute": ""}],
    "subjects": [
        subject("A1", dob="03.02.2020", Notes="Müller's cage"),
        subject("A2", sex="M", dob="2020-02-05"),
        subject("A3", lab="witten", dob="43831"),
        subject("A4", dob="31.02.2020"),  # no such day: map
        subject("A5", lab="nowhere"),  # no such lab: reference
        subject("A6", sex="x"),  # not in the sex map: map
        subject("A7", sex="", dob="NA"),  # default sex, no birth date
        subject("A1", dob="04.02.2020"),  # the same id again, different: duplicate
        subject("A2", sex="M", dob="2020-02-05"),  # the same record again: harmless
    ],
    "weighings": [
        weighing("A1", "01.03.2020 10:00", "21,5"),
        weighing("A3", "01.03.2020 09:30", "19"),
        weighing("A9", "01.03.2020 09:30", "19"),  # no such subject: reference
        weighing("A1", "02.03.2020 10:00", "abc"),  # not a number: map
        weighing("A4", "02.03.2020 10:00", "20"),  # its subject was rejected: reference
    ],
}


def settings_for(db: Database, mappings: dict[str, Any] | None = None, **extra: Any) -> Settings:
    mappings = MAPPINGS if mappings is None else mappings
    return Settings(
        database_url=db.url.render_as_string(hide_password=False),
        schema_prefix=db.schema_prefix,
        connectors={"legacy": {"type": "legacytest", "page_size": 3}},
        pipelines=["legacy_pipeline"],
        mappings={"legacy": mappings} if mappings else {},
        batch_size=4,
        **extra,
    )


def test_sync_lands_good_rows_and_quarantines_each_bad_one(db: Database, legacy_type: None) -> None:
    Legacy.DATA = DATA
    settings = settings_for(db)
    [report] = sync(settings, db=db)
    by_stream = {s.stream: s for s in report.streams}
    assert [s.stream for s in report.streams] == ["labs", "subjects", "weighings"]
    assert (by_stream["subjects"].new, by_stream["subjects"].quarantined) == (4, 4)
    assert by_stream["subjects"].duplicates == 1
    assert (by_stream["weighings"].new, by_stream["weighings"].quarantined) == (2, 3)
    subjects = {r["subject"]: r for r in db.fetch(lp.Subject)}
    assert sorted(subjects) == ["A1", "A2", "A3", "A7"]
    assert subjects["A1"]["date_of_birth"] == dt.date(2020, 2, 3)  # the first A1 is kept
    assert subjects["A1"]["notes"] == "Müller's cage"
    assert subjects["A3"]["date_of_birth"] == dt.date(2020, 1, 1)
    assert (subjects["A7"]["sex"], subjects["A7"]["date_of_birth"]) == ("U", None)
    weights = {r["weighing_id"]: r["weight"] for r in db.fetch(lp.Weighing)}
    assert weights == {
        "A1/01.03.2020 10:00": decimal.Decimal("21.50"),
        "A3/01.03.2020 09:30": decimal.Decimal("19.00"),
    }
    rejected = {(q["stream"], q["source_key"]): q for q in admin.quarantine_list(db, "legacy")}
    stages = {k: q["stage"] for k, q in rejected.items()}
    assert stages == {
        ("subjects", '["A4"]'): "map",
        ("subjects", '["A5"]'): "reference",
        ("subjects", '["A6"]'): "map",
        ("subjects", '["A1"]'): "duplicate",
        ("weighings", '["A9","01.03.2020 09:30"]'): "reference",
        ("weighings", '["A1","02.03.2020 10:00"]'): "map",
        ("weighings", '["A4","02.03.2020 10:00"]'): "reference",
    }
    assert (
        "column date_of_birth: '31.02.2020' is not a date"
        in rejected["subjects", '["A4"]']["error"]
    )
    assert "no row of colony.#lab has lab_name='nowhere'" in rejected["subjects", '["A5"]']["error"]
    assert "read again with different content" in rejected["subjects", '["A1"]']["error"]
    assert (
        "column weight: 'abc' is not a number"
        in rejected["weighings", '["A1","02.03.2020 10:00"]']["error"]
    )

    [again] = sync(settings, db=db)  # idempotent: nothing new, the same rejects
    totals = again.counts()
    assert (totals["new"], totals["changed"], totals["inserted"], totals["updated"]) == (0, 0, 0, 0)
    assert totals["quarantined"] == 7
    assert len(admin.quarantine_list(db, "legacy")) == 7
    assert db.count(lp.Subject) == 4


def test_a_reflected_table_is_found_without_its_tier_prefix(db: Database) -> None:
    db.declare(*lp.SCHEMAS)
    fresh = Database(db.url, schema_prefix=db.schema_prefix)  # knows no tables: reflects them
    try:
        smap = stream_map(fresh, "legacy", "subjects", _tables(MAPPINGS["subjects"]))
        assert [s.qualname for s in smap.specs] == ["colony.subject"]
        assert not smap.specs[0].declared
        assert fresh.spec("colony.#lab").has_column("institution")  # the lookup's table
    finally:
        fresh.dispose()


def test_a_map_says_whether_its_rows_hold_lookups(db: Database) -> None:
    db.declare(*lp.SCHEMAS)
    subjects = stream_map(db, "legacy", "subjects", _tables(MAPPINGS["subjects"]))
    weighings = stream_map(db, "legacy", "weighings", _tables(MAPPINGS["weighings"]))
    assert subjects.lookups  # a lab by its name
    assert not weighings.lookups  # the engine need not look through its rows for one


def _tables(raw: list[dict[str, Any]]) -> Any:
    from limsync.config.mappings import TableMapping

    return [TableMapping.model_validate(t) for t in raw]


def _broken(stream: str, table: int, change: Any) -> dict[str, Any]:
    mappings = {k: [dict(t, columns=dict(t["columns"])) for t in v] for k, v in MAPPINGS.items()}
    change(mappings[stream][table])
    return mappings


@pytest.mark.parametrize(
    ("mappings", "message"),
    [
        (
            _broken("subjects", 0, lambda t: t["columns"].update(colour="Colour")),
            "mappings.legacy.subjects[0].columns.colour: table colony.subject has no column "
            "'colour' (columns: subject, lab_name, sex,",
        ),
        (
            _broken("subjects", 0, lambda t: t["columns"].pop("subject")),
            "mappings.legacy.subjects[0]: table colony.subject needs column(s) subject, which",
        ),
        (
            _broken("subjects", 0, lambda t: t.update(table="colony.animal")),
            "mappings.legacy.subjects[0].table: no table 'colony.animal'",
        ),
        (
            _broken(
                "subjects",
                0,
                lambda t: t["columns"].update(
                    lab_name={"lookup": "colony.lab", "match": {"name": "Lab"}}
                ),
            ),
            "mappings.legacy.subjects[0].columns.lab_name: lookup table colony.#lab has no "
            "column 'name'",
        ),
        (
            _broken("labs", 0, lambda t: t["columns"].update(lab_name="Nmae")),
            "mappings.legacy.labs[0].columns.lab_name: the source has no field 'Nmae' "
            "(fields: Institute, Name, institute, name)",
        ),
        (
            {**MAPPINGS, "animals": MAPPINGS["subjects"]},
            "mappings.legacy.animals: connector 'legacy' has no stream 'animals'",
        ),
        ({}, "connector 'legacy' (type legacytest) has no default mapping: map its streams"),
    ],
)
def test_prepare_checks_tables_and_columns(
    tmp_path: Path, legacy_type: None, mappings: dict[str, Any], message: str
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        settings = settings_for(db, mappings)
        with pytest.raises(ConfigError) as info:
            prepare(settings, db, "legacy")
        assert message in str(info.value)
    finally:
        db.dispose()


def test_an_unknown_pipeline_module(tmp_path: Path, legacy_type: None) -> None:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        settings = settings_for(db)
        settings.pipelines = ["no_such_pipeline"]
        with pytest.raises(ConfigError, match=r"pipelines\[0\]: 'no_such_pipeline' is neither"):
            prepare(settings, db, "legacy")
    finally:
        db.dispose()
