"""Readers of the ``files`` connector: one generator of records per file format.

Every reader takes ``(path, label, settings)`` and yields dicts: the file's columns (or JSON
keys) with their raw values, plus ``_source`` naming the file and the line (CSV, NDJSON), the
record index (JSON) or the sheet and row (Excel). Blank lines and rows are skipped. A record the
reader knows is broken (a line that is not JSON) is yielded with ``_invalid`` set so that it is
quarantined rather than stopping the file.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limsync.connectors.tabular import INVALID_FIELD, SOURCE_FIELD
from limsync.errors import SourceError

if TYPE_CHECKING:
    from limsync.connectors.files import FileStreamSettings

__all__ = ["READERS", "Record", "detect_encoding", "format_of"]

log = logging.getLogger(__name__)

Record = dict[str, Any]
Reader = Callable[[Path, str, "FileStreamSettings"], Iterator[Record]]

EXTRA_FIELD = "_extra"
"""Cells of a CSV row beyond its header's width."""

_EXTENSIONS = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
}
_CHUNK = 1 << 20
_SNIFF = 64 * 1024


def format_of(path: Path) -> str:
    """The format implied by a file's extension; ValueError naming the file when unknown."""
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path.name!r} from its extension; set format = "
            '"csv", "tsv", "json", "ndjson" or "xlsx"'
        )
    return fmt


def detect_encoding(path: Path) -> str:
    """A BOM's encoding; else UTF-8 if the whole file decodes as UTF-8; else cp1252; else latin-1.

    Reads the file once in 1 MiB chunks (cheap next to parsing it); cp1252 is tried before
    latin-1 because Windows exports use its curly quotes and dashes in 0x80-0x9f.
    """
    with path.open("rb") as f:
        head = f.read(4)
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
            return "utf-32"
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        for encoding in ("utf-8", "cp1252"):
            f.seek(0)
            decoder = codecs.getincrementaldecoder(encoding)()
            try:
                while chunk := f.read(_CHUNK):
                    decoder.decode(chunk)
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                continue
            return encoding
    return "latin-1"


def _encoding(path: Path, conf: FileStreamSettings) -> str:
    if conf.encoding == "auto":
        return detect_encoding(path)
    if conf.encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        return "utf-8-sig"  # a declared UTF-8 file may still start with a BOM
    return conf.encoding


def _header(cells: list[Any], label: str, where: str) -> list[str]:
    """Column names: stripped; blank ones named ``column_<n>``; repeated ones suffixed."""
    names: list[str] = []
    for i, cell in enumerate(cells):
        name = "" if cell is None else str(cell).strip().lstrip("\ufeff").strip()
        name = name or f"column_{i + 1}"
        if name in names:
            n = 2
            while f"{name}_{n}" in names:
                n += 1
            log.warning("%s: column %r repeats in %s; the repeat is named %r", label, name,
                        where, f"{name}_{n}")  # fmt: skip
            name = f"{name}_{n}"
        names.append(name)
    return names


def _check_key(header: list[str], conf: FileStreamSettings, label: str) -> None:
    missing = [k for k in conf.key if k not in header]
    if missing:
        raise SourceError(
            f"{label}: no key column {', '.join(map(repr, missing))} in the header "
            f"(columns: {', '.join(header)})"
        )


def _blank(cells: list[Any] | tuple[Any, ...]) -> bool:
    return all(c is None or (isinstance(c, str) and not c.strip()) for c in cells)


# --- CSV and TSV ----------------------------------------------------------------------------------


_CANDIDATES = ",;\t|"
_SAMPLE_ROWS = 50


def _delimiter(text: str, conf: FileStreamSettings, fmt: str) -> str:
    """The declared delimiter; else, of ``, ; tab |``, the one that splits the file's start best.

    Each candidate parses the first rows of ``text`` (the file's first 64 KiB); it qualifies
    when it splits the header into two or more columns, and the one whose rows most often have
    the header's width wins, then the one giving most columns, then the earlier in the list.
    This costs a few parses of 50 rows where ``csv.Sniffer`` took 0.25-0.5 s a file (regular
    expressions over the whole sample); the Sniffer remains the fallback for a header that no
    candidate splits.
    """
    if conf.delimiter is not None:
        return conf.delimiter
    if fmt == "tsv":
        return "\t"
    lines = [line for line in text.splitlines() if line.strip()]
    if len(text) >= _SNIFF and len(lines) > 1:
        lines.pop()  # probably cut short by the sample's end
    lines = lines[:_SAMPLE_ROWS]
    best: tuple[float, int] = (0.0, 1)
    chosen = None
    for candidate in _CANDIDATES:
        try:
            widths = [len(row) for row in csv.reader(lines, delimiter=candidate)]
        except csv.Error:
            continue
        if not widths or widths[0] < 2:
            continue
        rest = widths[1:]
        share = sum(w == widths[0] for w in rest) / len(rest) if rest else 1.0
        if (share, widths[0]) > best:
            best, chosen = (share, widths[0]), candidate
    if chosen is not None:
        return chosen
    try:
        return csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=_CANDIDATES).delimiter
    except csv.Error:
        return ","


def _read_delimited(path: Path, label: str, conf: FileStreamSettings, fmt: str) -> Iterator[Record]:
    encoding = _encoding(path, conf)
    with path.open(encoding=encoding, newline="") as f:
        try:
            delimiter = _delimiter(f.read(_SNIFF), conf, fmt)
        except UnicodeDecodeError as exc:
            raise _decode_error(label, encoding, exc, None) from None
        f.seek(0)
        reader = csv.reader(f, delimiter=delimiter)
        line = 1  # the physical line where the next row starts (rows may span lines)
        try:
            for row in reader:
                start, line = line, reader.line_num + 1
                if row and not _blank(row):
                    header = _header(row, label, "the header")
                    _check_key(header, conf, label)
                    break
            else:
                return
            # The loop every row goes through: locals only, one dict built by zip.
            width = len(header)
            prefix = f"{label}:"
            source, extra = SOURCE_FIELD, EXTRA_FIELD
            for row in reader:
                start, line = line, reader.line_num + 1
                # Cheap test first: most rows start with a non-blank cell.
                if not row or (not row[0].strip() and _blank(row)):
                    continue
                record: Record = dict(zip(header, row, strict=False))
                if len(row) > width:
                    record[extra] = row[width:]
                record[source] = prefix + str(start)
                yield record
        except UnicodeDecodeError as exc:
            raise _decode_error(label, encoding, exc, line) from None
        except csv.Error as exc:
            raise SourceError(f"{label}:{line}: not valid {fmt.upper()}: {exc}") from None


def _decode_error(
    label: str, encoding: str, exc: UnicodeDecodeError, line: int | None
) -> SourceError:
    where = f"{label}:{line}" if line else label
    return SourceError(
        f'{where}: not valid {encoding} ({exc.reason}); set encoding (or encoding = "auto")'
    )


def read_csv(path: Path, label: str, conf: FileStreamSettings) -> Iterator[Record]:
    """Rows of a CSV file (delimiter declared or sniffed) as dicts keyed by the header."""
    return _read_delimited(path, label, conf, "csv")


def read_tsv(path: Path, label: str, conf: FileStreamSettings) -> Iterator[Record]:
    """Rows of a tab-separated file as dicts keyed by the header."""
    return _read_delimited(path, label, conf, "tsv")


# --- JSON and NDJSON ------------------------------------------------------------------------------


def read_json(path: Path, label: str, conf: FileStreamSettings) -> Iterator[Record]:
    """The records of a JSON document: the list itself, or the list at ``records``."""
    encoding = _encoding(path, conf)
    try:
        with path.open(encoding=encoding) as f:
            data: Any = json.load(f)
    except UnicodeDecodeError as exc:
        raise _decode_error(label, encoding, exc, None) from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{label}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    where = "the document"
    if conf.records:
        where = repr(conf.records)
        for part in conf.records.split("."):
            if not isinstance(data, dict) or part not in data:
                raise SourceError(f"{label}: no {conf.records!r} in the document")
            data = data[part]
    if not isinstance(data, list):
        raise SourceError(f'{label}: {where} is not a list of records (set records = "a.b")')
    for i, item in enumerate(data):
        source = f"{label}[{i}]"
        if isinstance(item, dict):
            yield {**item, SOURCE_FIELD: source}
        elif item is not None:
            yield {SOURCE_FIELD: source, INVALID_FIELD: "not a JSON object", "_value": item}


def read_ndjson(path: Path, label: str, conf: FileStreamSettings) -> Iterator[Record]:
    """One JSON object a line; a line that is not one is yielded as an invalid record."""
    encoding = _encoding(path, conf)
    number = 0
    try:
        with path.open(encoding=encoding) as f:
            for number, text in enumerate(f, 1):
                if not text.strip():
                    continue
                source = f"{label}:{number}"
                try:
                    item = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield {SOURCE_FIELD: source, INVALID_FIELD: f"not valid JSON: {exc.msg}",
                           "_text": text.strip()[:1000]}  # fmt: skip
                    continue
                if isinstance(item, dict):
                    yield {**item, SOURCE_FIELD: source}
                else:
                    yield {SOURCE_FIELD: source, INVALID_FIELD: "not a JSON object",
                           "_text": text.strip()[:1000]}  # fmt: skip
    except UnicodeDecodeError as exc:
        raise _decode_error(label, encoding, exc, number + 1) from None


# --- Excel ----------------------------------------------------------------------------------------


def read_xlsx(path: Path, label: str, conf: FileStreamSettings) -> Iterator[Record]:
    """Rows of a worksheet (read-only, streamed); date-formatted cells as dates or datetimes."""
    try:
        import openpyxl
        from openpyxl.styles.numbers import is_datetime
    except ImportError:
        raise SourceError(
            f"{label}: reading .xlsx files needs openpyxl: pip install 'limsync[excel]'"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a damaged or foreign file
        raise SourceError(f"{label}: not a readable .xlsx file: {exc}") from None
    try:
        if conf.sheet is None:
            sheet = book.worksheets[0]
        elif conf.sheet in book.sheetnames:
            sheet = book[conf.sheet]
        else:
            raise SourceError(
                f"{label}: no sheet {conf.sheet!r} (sheets: {', '.join(book.sheetnames)})"
            )
        header: list[str] | None = None
        # min_row=1: read-only sheets fill in missing rows from there, so numbers match Excel's.
        for number, row in enumerate(sheet.iter_rows(min_row=1), 1):
            values = [_cell_value(cell, is_datetime) for cell in row]
            if _blank(values):
                continue
            if header is None:
                header = _header(values, label, f"sheet {sheet.title!r}")
                _check_key(header, conf, label)
                continue
            record: Record = {
                name: value
                for name, value in zip(header, values, strict=False)
                if value is not None
            }
            record[SOURCE_FIELD] = f"{label}:{sheet.title}!{number}"
            yield record
    finally:
        book.close()


def _cell_value(cell: Any, is_datetime: Callable[[str], str | None]) -> Any:
    value = getattr(cell, "value", None)
    if isinstance(value, datetime) and is_datetime(cell.number_format) == "date":
        return value.date()  # a date-only format: a date, not midnight of it
    if isinstance(value, str):
        return value if value.strip() else None
    return value


READERS: dict[str, Reader] = {
    "csv": read_csv,
    "tsv": read_tsv,
    "json": read_json,
    "ndjson": read_ndjson,
    "xlsx": read_xlsx,
}
