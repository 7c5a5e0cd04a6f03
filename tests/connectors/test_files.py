"""The files connector: CSV/TSV/JSON/NDJSON/XLSX exports with the defects of real lab exports."""

from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import pydantic
import pytest
from pydantic import Field

from limsync.connectors import registry
from limsync.connectors.base import ReadContext, nothing_known
from limsync.connectors.filereaders import detect_encoding
from limsync.connectors.files import FilesConnector
from limsync.errors import ConfigError, SourceError
from limsync.pipeline import Database, Key, Manual, Schema
from limsync.sync import admin
from limsync.sync.engine import SyncEngine
from limsync.sync.mapping import ColumnMap, Mapper, StreamMap

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"


def connector(root: Path, **streams: dict[str, Any]) -> FilesConnector:
    settings = FilesConnector.parse_settings(
        {"type": "files", "root": str(root), "page_size": 3, "streams": streams}, name="legacy"
    )
    return FilesConnector("legacy", settings)


def read_all(c: FilesConnector, stream: str) -> list[dict[str, Any]]:
    ctx = ReadContext(full=True, cursor=None, known=nothing_known)
    return [r for page in c.read(stream, ctx) for r in page]


def valid(c: FilesConnector, stream: str, record: dict[str, Any]) -> bool:
    try:
        c.stream(stream).model.model_validate(record)
    except pydantic.ValidationError:
        return False
    return True


# --- settings -------------------------------------------------------------------------------------


def test_registered_as_files() -> None:
    assert registry.get("files") is FilesConnector


@pytest.mark.parametrize(
    ("stream", "conf", "message"),
    [
        ("Subjects", {"path": "a.csv", "key": ["id"]}, "streams.Subjects: stream names must"),
        ("subjects", {"path": "a.csv"}, "streams.subjects.key: Field required"),
        ("subjects", {"path": "a.csv", "key": []}, "streams.subjects.key: List should have"),
        ("subjects", {"path": "a.csv", "key": ["id", "id"]}, "repeats a column"),
        ("subjects", {"path": "a.csv", "key": ["json"]}, "clashes with a pydantic"),
        ("subjects", {"path": "a.csv", "key": ["_id"]}, "must not start with '_'"),
        ("subjects", {"path": "a.json", "key": ["id"], "delimiter": ";"}, "csv and tsv"),
        ("subjects", {"path": "a.csv", "key": ["id"], "encoding": "klingon"}, "unknown encoding"),
        ("subjects", {"path": "a.csv", "key": ["id"], "format": "xls"}, "streams.subjects.format"),
        ("subjects", {"path": "a.csv", "key": ["id"], "colour": "red"}, "colour: Extra inputs"),
    ],
)
def test_bad_stream_settings_name_the_place(
    tmp_path: Path, stream: str, conf: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match="legacy") as info:
        connector(tmp_path, **{stream: conf})
    assert message in str(info.value)


def test_at_least_one_stream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"connectors\.legacy\.streams: define at least one"):
        connector(tmp_path)


def test_no_file_matches_names_the_place(tmp_path: Path) -> None:
    c = connector(tmp_path, subjects={"path": "subjects*.csv", "key": ["subject_id"]})
    with pytest.raises(ConfigError, match=r"connectors\.legacy\.streams\.subjects\.path: no file"):
        read_all(c, "subjects")
    [_, result] = c.check()
    assert not result.ok and "no file matches" in result.detail


def test_unknown_extension_needs_a_format(tmp_path: Path) -> None:
    (tmp_path / "subjects.dat").write_text("subject_id\nS1\n")
    c = connector(tmp_path, subjects={"path": "subjects.*", "key": ["subject_id"]})
    with pytest.raises(ConfigError, match="set format"):
        read_all(c, "subjects")
    c = connector(tmp_path, subjects={"path": "subjects.*", "key": ["subject_id"], "format": "csv"})
    assert [r["subject_id"] for r in read_all(c, "subjects")] == ["S1"]


# --- CSV and TSV ----------------------------------------------------------------------------------


def test_csv_glob_with_encodings_delimiters_blank_lines_and_duplicates() -> None:
    c = connector(FIXTURES, subjects={"path": "subjects_*.csv", "key": ["subject_id"]})
    records = read_all(c, "subjects")
    by_source = {r["_source"]: r for r in records}
    # latin-1 + semicolons + CRLF (2019) and UTF-8 with a BOM + commas (2020), in sorted order.
    assert by_source["subjects_2019.csv:2"]["nickname"] == "Mücke"
    assert by_source["subjects_2019.csv:2"]["responsible"] == "Zoë Müller"
    assert by_source["subjects_2020.csv:2"]["nickname"] == "Ørsted"
    assert "subject_id" in by_source["subjects_2020.csv:2"]  # no BOM in the first column name
    # A quoted field spanning two lines; the next record's line number accounts for it.
    assert by_source["subjects_2019.csv:3"]["notes"] == "cage 3; moved\r\nto rack B"
    assert by_source["subjects_2019.csv:6"]["nickname"] == "Kröte"
    # Values stay raw strings: mixed date formats are the mapping's business.
    dates = {r["birth_date"] for r in records}
    assert {"03/04/2019", "2019-04-11", "11.04.2019", "5/1/19", "2020-02-30"} <= dates
    # Blank and whitespace-only lines are skipped; the trailing ';' column gets a name.
    assert all(r.get("subject_id") is not None for r in records)
    assert by_source["subjects_2019.csv:2"]["column_8"] == ""
    # The record without a key fails validation (so the engine quarantines it).
    assert not valid(c, "subjects", by_source["subjects_2019.csv:7"])
    # S002 again with another sex: marked invalid, naming the first one.
    dup = by_source["subjects_2019.csv:10"]
    assert dup["_invalid"] == (
        "duplicate key with different content at subjects_2019.csv:10, first at subjects_2019.csv:3"
    )
    with pytest.raises(pydantic.ValidationError, match=r"first at subjects_2019\.csv:3"):
        c.stream("subjects").model.model_validate(dup)
    # S004 again, identical: passed through for the engine to count as a duplicate.
    assert "_invalid" not in by_source["subjects_2019.csv:11"]
    assert valid(c, "subjects", by_source["subjects_2019.csv:11"])
    # First occurrences come in file order, duplicates after the scan.
    order = [r["_source"] for r in records]
    assert order.index("subjects_2020.csv:5") < order.index("subjects_2019.csv:10")


def test_encoding_detection(tmp_path: Path) -> None:
    assert detect_encoding(FIXTURES / "subjects_2019.csv") == "cp1252"
    assert detect_encoding(FIXTURES / "subjects_2020.csv") == "utf-8-sig"
    assert detect_encoding(FIXTURES / "weighings.tsv") == "cp1252"
    plain = tmp_path / "plain.csv"
    plain.write_text("id,name\n1,Zoë\n", encoding="utf-8")
    assert detect_encoding(plain) == "utf-8"
    undefined = tmp_path / "latin.csv"
    undefined.write_bytes(b"id,name\n1,\x81\xe9\n")  # 0x81 is undefined in cp1252
    assert detect_encoding(undefined) == "latin-1"


def test_declared_encoding_that_does_not_fit_names_file_and_line(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "subjects_2019.csv", tmp_path / "subjects.csv")
    c = connector(tmp_path, subjects={"path": "subjects.csv", "key": ["subject_id"],
                                      "encoding": "utf-8", "delimiter": ";"})  # fmt: skip
    with pytest.raises(SourceError, match=r"subjects\.csv.*not valid utf-8.*set encoding"):
        read_all(c, "subjects")
    c = connector(tmp_path, subjects={"path": "subjects.csv", "key": ["subject_id"],
                                      "encoding": "latin-1"})  # fmt: skip
    assert read_all(c, "subjects")[0]["nickname"] == "Mücke"


def test_tsv_cp1252_composite_key() -> None:
    c = connector(FIXTURES, weighings={"path": "weighings.tsv", "key": ["subject_id", "date_time"]})
    records = read_all(c, "weighings")
    assert [r["_source"] for r in records] == [
        "weighings.tsv:2", "weighings.tsv:3", "weighings.tsv:4", "weighings.tsv:6",
    ]  # fmt: skip
    assert records[0]["comment"] == "\u201cok\u201d" and records[0]["weight_g"] == "21,4"
    assert c.stream("weighings").key_from_raw(records[0]) == ("S001", "2019-05-02 09:30")


def test_missing_key_column_fails_the_stream_clearly(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("id,name\n1,a\n")
    c = connector(tmp_path, subjects={"path": "s.csv", "key": ["subject_id"]})
    with pytest.raises(SourceError, match=r"s\.csv: no key column 'subject_id'.*columns: id, name"):
        read_all(c, "subjects")


def test_ragged_rows_and_repeated_header_names(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("id,name,name\n1,a,b,extra1,extra2\n2\n")
    c = connector(tmp_path, subjects={"path": "s.csv", "key": ["id"]})
    first, second = read_all(c, "subjects")
    assert first == {"id": "1", "name": "a", "name_2": "b", "_extra": ["extra1", "extra2"],
                     "_source": "s.csv:2"}  # fmt: skip
    assert second == {"id": "2", "_source": "s.csv:3"}


def test_duplicates_across_pages_and_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n" + "".join(f"{i},x\n" for i in range(10)))
    (tmp_path / "b.csv").write_text("id,v\n3,x\n4,changed\n11,x\n")
    c = connector(tmp_path, subjects={"path": "*.csv", "key": ["id"]})
    records = read_all(c, "subjects")
    assert len(records) == 13
    marked = {r["_source"]: r.get("_invalid") for r in records[-2:]}
    assert marked == {
        "b.csv:2": None,
        "b.csv:3": "duplicate key with different content at b.csv:3, first at a.csv:6",
    }


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        # A comma inside the header and the values does not beat the semicolons.
        (
            'id;"weight (g, wet)";date\n1;21,4;2020\n2;"20,1";2021\n',
            ["id", "weight (g, wet)", "date"],
        ),
        ("id|name\n1|a,b\n", ["id", "name"]),
        ("id\tname\n1\ta;b\n", ["id", "name"]),
        # More columns by comma, but only the semicolons give every row the header's width.
        ("id;a,b,c\n1;x\n2;y\n", ["id", "a,b,c"]),
        ("id\n1\n", ["id"]),  # one column: the default comma
        ("\n \nid,name\n1,a\n", ["id", "name"]),  # blank lines before the header
    ],
)
def test_delimiter_detection(tmp_path: Path, text: str, columns: list[str]) -> None:
    (tmp_path / "s.csv").write_text(text)
    c = connector(tmp_path, subjects={"path": "s.csv", "key": ["id"]})
    first = read_all(c, "subjects")[0]
    assert [k for k in first if k != "_source"] == columns


def test_blank_and_unhashable_keys_are_not_duplicates(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("id,v\n,a\n1,x\n,b\n1,x\n")
    c = connector(tmp_path, subjects={"path": "s.csv", "key": ["id"]})
    records = read_all(c, "subjects")
    # The blank keys come in file order, unmarked (validation rejects them); the repeat of 1 last.
    assert [(r["_source"], r.get("_invalid")) for r in records] == [
        ("s.csv:2", None), ("s.csv:3", None), ("s.csv:4", None), ("s.csv:5", None),
    ]  # fmt: skip
    assert not valid(c, "subjects", records[0])
    (tmp_path / "j.ndjson").write_text('{"id": [1, 2]}\n{"id": [1, 2], "v": 1}\n{"id": 3}\n')
    c = connector(tmp_path, sessions={"path": "j.ndjson", "key": ["id"]})
    records = read_all(c, "sessions")
    assert [r["_source"] for r in records] == ["j.ndjson:1", "j.ndjson:3", "j.ndjson:2"]
    assert records[2]["_invalid"] == (
        "duplicate key with different content at j.ndjson:2, first at j.ndjson:1"
    )


# --- JSON and NDJSON ------------------------------------------------------------------------------


def test_json_records_path_and_bad_entries() -> None:
    c = connector(FIXTURES, sessions={"path": "sessions.json", "key": ["session_id"],
                                      "records": "data.items"})  # fmt: skip
    records = read_all(c, "sessions")
    first = records[0]
    assert first["session_id"] == 101 and first["rig"] == {"name": "rig1", "room": "B2"}
    assert first["_source"] == "sessions.json[0]"
    bad = next(r for r in records if r["_source"] == "sessions.json[2]")
    assert bad["_invalid"] == "not a JSON object" and not valid(c, "sessions", bad)
    # The identical repeat of 101 is passed through, not marked.
    assert [r.get("_invalid") for r in records if r.get("session_id") == 101] == [None, None]


def test_json_without_the_records_path(tmp_path: Path) -> None:
    c = connector(FIXTURES, sessions={"path": "sessions.json", "key": ["session_id"]})
    with pytest.raises(SourceError, match="is not a list of records"):
        read_all(c, "sessions")
    c = connector(FIXTURES, sessions={"path": "sessions.json", "key": ["session_id"],
                                      "records": "data.rows"})  # fmt: skip
    with pytest.raises(SourceError, match=r"no 'data\.rows' in the document"):
        read_all(c, "sessions")


def test_ndjson_blank_and_broken_lines() -> None:
    c = connector(FIXTURES, sessions={"path": "sessions.ndjson", "key": ["session_id"]})
    records = read_all(c, "sessions")
    assert [r["_source"] for r in records] == [
        "sessions.ndjson:1", "sessions.ndjson:3", "sessions.ndjson:4", "sessions.ndjson:5",
        "sessions.ndjson:7",
    ]  # fmt: skip
    assert records[0]["user"] == "Zoë"
    assert records[2]["_invalid"].startswith("not valid JSON")
    assert records[2]["_text"].startswith('{"session_id": 203')
    assert [valid(c, "sessions", r) for r in records] == [True, True, False, False, True]


# --- Excel ----------------------------------------------------------------------------------------


def write_xlsx(path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.active.title = "Notes"
    book.active.append(["exported by OldLIMS"])
    sheet = book.create_sheet("Subjects")
    sheet.append(["subject_id", "birth_date", "weighed_at", "weight", "remark"])
    sheet.append(["S001", date(2019, 4, 3), datetime(2019, 5, 2, 9, 30), 21.4, "Zoë"])
    sheet.append([None, None, None, None, None])
    sheet.append(["S002", 43831, None, 20, "   "])  # a serial number in a date-formatted cell
    sheet.cell(row=4, column=2).number_format = "yyyy-mm-dd"
    sheet.append(["S003", "12/04/2019", None, None, "typed as text"])
    book.save(path)


def test_xlsx_dates_serials_and_blank_rows(tmp_path: Path) -> None:
    write_xlsx(tmp_path / "export.xlsx")
    c = connector(tmp_path, subjects={"path": "export.xlsx", "key": ["subject_id"],
                                      "sheet": "Subjects"})  # fmt: skip
    records = read_all(c, "subjects")
    assert records == [
        {"subject_id": "S001", "birth_date": date(2019, 4, 3),
         "weighed_at": datetime(2019, 5, 2, 9, 30), "weight": 21.4, "remark": "Zoë",
         "_source": "export.xlsx:Subjects!2"},
        {"subject_id": "S002", "birth_date": date(2020, 1, 1), "weight": 20,
         "_source": "export.xlsx:Subjects!4"},
        {"subject_id": "S003", "birth_date": "12/04/2019", "remark": "typed as text",
         "_source": "export.xlsx:Subjects!5"},
    ]  # fmt: skip


def test_xlsx_missing_sheet(tmp_path: Path) -> None:
    write_xlsx(tmp_path / "export.xlsx")
    c = connector(tmp_path, subjects={"path": "export.xlsx", "key": ["subject_id"],
                                      "sheet": "Mice"})  # fmt: skip
    with pytest.raises(SourceError, match=r"no sheet 'Mice' \(sheets: Notes, Subjects\)"):
        read_all(c, "subjects")
    with pytest.raises(ConfigError, match="sheet applies to xlsx files only"):
        connector(tmp_path, subjects={"path": "a.csv", "key": ["subject_id"], "sheet": "Mice"})


def test_missing_openpyxl_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openpyxl", None)  # makes "import openpyxl" fail
    with pytest.raises(ConfigError, match=r"streams\.subjects: .*pip install 'limsync\[excel\]'"):
        connector(tmp_path, subjects={"path": "export.xlsx", "key": ["subject_id"]})


# --- check ----------------------------------------------------------------------------------------


def test_check_reports_each_stream() -> None:
    c = connector(
        FIXTURES,
        subjects={"path": "subjects_*.csv", "key": ["subject_id"]},
        weighings={"path": "weighings.tsv", "key": ["animal"]},
        sessions={"path": "sessions.json", "key": ["session_id"], "records": "data.items",
                  "enabled": False},
    )  # fmt: skip
    results = {r.name: r for r in c.check()}
    assert results["stream subjects"].ok
    assert results["stream subjects"].detail == "2 file(s), first: subjects_2019.csv"
    assert not results["stream weighings"].ok
    assert "no key column 'animal'" in results["stream weighings"].detail
    assert results["stream sessions"].detail == "disabled"


# --- through the engine ---------------------------------------------------------------------------

legacy = Schema("legacy")


class Subject(Manual):
    """A subject from the legacy export."""

    __schema__ = legacy
    subject_id: Annotated[str, Key, Field(max_length=16)]
    nickname: Annotated[str, Field(max_length=32)]
    sex: Annotated[str, Field(max_length=1)]


def engine_for(db: Database, root: Path) -> SyncEngine:
    c = connector(root, subjects={"path": "subjects_*.csv", "key": ["subject_id"]})
    db.declare(legacy)
    columns = {"subject_id": "subject_id", "nickname": "nickname", "sex": "sex"}
    mapper = Mapper(db, StreamMap("subjects", (Subject,), ColumnMap(Subject, columns)))
    return SyncEngine(db, c, {"subjects": mapper}, batch_size=4)


def test_sync_quarantines_duplicates_and_ignores_renamed_files(
    db: Database, tmp_path: Path
) -> None:
    for name in ("subjects_2019.csv", "subjects_2020.csv"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    report = engine_for(db, tmp_path).run()
    assert report.ok, report.first_error()
    [sr] = report.streams
    assert (sr.read, sr.new, sr.duplicates, sr.quarantined) == (10, 7, 1, 2)
    assert {r["subject_id"]: r["sex"] for r in db.fetch(Subject)}["S002"] == "M"  # first wins
    problems = {i["error"] for i in admin.quarantine_list(db, "legacy")}
    assert any("key column is empty" in p for p in problems)
    assert any("first at subjects_2019.csv:3" in p for p in problems)
    # Renaming and reordering files changes only _source, which is volatile: nothing to do.
    (tmp_path / "subjects_2019.csv").rename(tmp_path / "subjects_b.csv")
    (tmp_path / "subjects_2020.csv").rename(tmp_path / "subjects_a.csv")
    again = engine_for(db, tmp_path).run()
    assert again.ok, again.first_error()
    [sr] = again.streams
    assert (sr.new, sr.changed, sr.unchanged, sr.gone) == (0, 0, 7, 0)
