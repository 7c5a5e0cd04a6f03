"""The ``files`` connector: a legacy LIMS's exports (CSV/TSV, JSON, NDJSON, Excel) as streams.

Each configured stream reads one file or a glob of files (in sorted order)::

    [connectors.legacy]
    type = "files"
    root = "exports/"
    [connectors.legacy.streams.subjects]
    path = "subjects*.csv"
    key = ["subject_id"]

Records are the files' rows as dicts of raw values (strings from CSV, JSON values, Excel cell
values with dates as dates), plus ``_source`` (``subjects.csv:12``), see
:mod:`limsync.connectors.tabular`. Files have no modified time per record: every read is a full
scan and the engine finds changes by content hash. CSV is read with the ``csv`` module, a row
at a time, so memory stays bounded whatever the file size; a JSON document (not NDJSON) is
loaded whole.
"""

from __future__ import annotations

import codecs
import glob
import logging
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from limsync.connectors import (
    CheckResult,
    Connector,
    ConnectorSettings,
    Page,
    ReadContext,
    Stream,
)
from limsync.connectors.filereaders import READERS, Record, format_of
from limsync.connectors.tabular import (
    INVALID_FIELD,
    META_FIELDS,
    SOURCE_FIELD,
    KeyTracker,
    RecordStreamSettings,
    page_key_hashes,
    record_model,
)
from limsync.errors import ConfigError, LimsyncError, SourceError

__all__ = ["FileStreamSettings", "FilesConnector", "FilesSettings"]

log = logging.getLogger(__name__)

Format = Literal["csv", "tsv", "json", "ndjson", "xlsx"]


class FileStreamSettings(RecordStreamSettings):
    """One ``[connectors.<name>.streams.<stream>]`` of a files connector."""

    path: str = Field(min_length=1)
    """A file or a glob, relative to the connector's ``root`` (or the working directory)."""
    format: Format | None = None
    """Default: from each file's extension."""
    encoding: str = "auto"
    """``auto``: a BOM, else UTF-8 if the whole file decodes, else cp1252, else latin-1."""
    delimiter: str | None = Field(None, min_length=1, max_length=1)
    """CSV only; when absent, detected from the file's first rows (``, ; tab |``; TSV: a tab)."""
    sheet: str | None = None
    """Excel only: the worksheet (default: the first)."""
    records: str | None = None
    """JSON only: dotted path to the list of records (``data.items``); default: the document."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ValueError(f"unknown encoding {self.encoding!r}") from None
        fmt = self.format or _format_of_pattern(self.path)
        if self.delimiter is not None and fmt not in (None, "csv", "tsv"):
            raise ValueError("delimiter applies to csv and tsv files only")
        if self.sheet is not None and fmt not in (None, "xlsx"):
            raise ValueError("sheet applies to xlsx files only")
        if self.records is not None and fmt not in (None, "json"):
            raise ValueError("records applies to json files only")
        return self


def _format_of_pattern(pattern: str) -> str | None:
    try:
        return format_of(Path(pattern))
    except ValueError:
        return None  # e.g. "subjects*": decided per file


class FilesSettings(ConnectorSettings):
    """Settings of a files connector instance (``type = "files"``)."""

    type: Literal["files"] = "files"
    root: Path | None = None
    """Base directory of relative stream paths (default: the working directory)."""
    page_size: int = Field(5000, ge=1)
    streams: dict[str, FileStreamSettings] = {}  # type: ignore[assignment]


class FilesConnector(Connector):
    """Reads configured files; one stream per file or glob."""

    type_name = "files"
    settings_model: ClassVar[type[ConnectorSettings]] = FilesSettings
    instance_streams = True

    settings: FilesSettings

    @classmethod
    def define_streams(cls, settings: ConnectorSettings) -> Sequence[Stream]:
        """One stream per configured ``streams`` entry; ``_source`` is volatile."""
        assert isinstance(settings, FilesSettings)
        streams = []
        for name, conf in settings.streams.items():
            fmt = conf.format or _format_of_pattern(conf.path)
            if fmt == "xlsx":
                _require_openpyxl(name)
            streams.append(
                Stream(
                    name,
                    conf.path,
                    record_model(name, conf.key),
                    key=tuple(conf.key),
                    volatile={SOURCE_FIELD},
                    description=f"{fmt or 'files'}: {conf.path}",
                )
            )
        return streams

    def open(self) -> None:
        """Nothing to authenticate."""
        self._opened = True

    # --- locating files -------------------------------------------------------------------------

    def file_settings(self, stream: str) -> FileStreamSettings:
        """The settings of a configured stream."""
        self.stream(stream)
        return self.settings.streams[stream]

    @property
    def root(self) -> Path:
        """The base directory of relative paths."""
        return self.settings.root or Path(".")

    def files(self, stream: str) -> list[Path]:
        """The stream's files in sorted order; ConfigError naming the place when none match."""
        conf = self.file_settings(stream)
        pattern = self.root / conf.path
        found = sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())
        if not found:
            raise ConfigError(
                f"connectors.{self.name}.streams.{stream}.path: no file matches {str(pattern)!r}"
            )
        return found

    def label(self, path: Path) -> str:
        """How ``_source`` names a file: relative to the root when it is under it."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.name

    # --- reading --------------------------------------------------------------------------------

    def records(self, stream: str) -> Iterator[Record]:
        """Every record of every file of a stream, in file order, blank lines skipped."""
        conf = self.file_settings(stream)
        for path in self.files(stream):
            try:
                fmt = conf.format or format_of(path)
            except ValueError as exc:
                raise ConfigError(f"connectors.{self.name}.streams.{stream}: {exc}") from None
            try:
                yield from READERS[fmt](path, self.label(path), conf)
            except OSError as exc:
                raise SourceError(f"{path}: cannot be read: {exc.strerror or exc}") from None

    def read(self, stream: str, ctx: ReadContext) -> Iterator[Page]:
        """Pages of records (always a full scan); duplicate keys resolved after the scan.

        A record whose key was already read is held back; after the scan each one is compared
        with the first record of its key: same content, it goes through as is (the engine counts
        it as a duplicate); different content, it is marked invalid ("duplicate key with
        different content, first at subjects.csv:3") and so quarantined.

        Keys seen are remembered as 64-bit hashes in a :class:`KeyTracker` (8 bytes a key),
        hashed a page at a time (:func:`page_key_hashes`); only hash hits are held back, and
        the second read confirms them with the real keys.
        """
        key = self.stream(stream).key
        size = self.page_size(stream)
        tracker = KeyTracker()
        held: list[Record] = []
        records = self.records(stream)
        while page := list(islice(records, size)):
            hashes, tracked = page_key_hashes(page, key)
            again = np.flatnonzero(tracker.repeats(hashes[tracked]))
            if len(again):
                # Positions among the tracked records back to positions in the page.
                drop = set((again if tracked.all() else np.flatnonzero(tracked)[again]).tolist())
                held.extend(page[i] for i in sorted(drop))
                page = [r for i, r in enumerate(page) if i not in drop]
            if page:
                yield page
        if held:
            yield from _pages(self._resolve_duplicates(stream, held), size)

    def _resolve_duplicates(self, stream: str, held: list[Record]) -> Iterator[Record]:
        key_of = _hashable(_key_getter(self.stream(stream).key))
        wanted = {key_of(r) for r in held}
        first: dict[tuple[Any, ...], Record] = {}
        for record in self.records(stream):
            k = key_of(record)
            if k in wanted and k not in first:
                first[k] = record
                if len(first) == len(wanted):
                    break
        for record in held:
            original = first.get(key_of(record))
            if original is None or original.get(SOURCE_FIELD) == record.get(SOURCE_FIELD):
                yield record  # a hash collision: not a duplicate after all
            elif _content(original) != _content(record):
                log.warning(
                    "%s.%s: duplicate key at %s, first at %s",
                    self.name,
                    stream,
                    record.get(SOURCE_FIELD),
                    original.get(SOURCE_FIELD),
                )
                record[INVALID_FIELD] = (
                    f"duplicate key with different content at {record[SOURCE_FIELD]}, "
                    f"first at {original[SOURCE_FIELD]}"
                )
                yield record
            else:
                yield record

    def sample(self, stream: str, limit: int = 1) -> Page:
        """The first ``limit`` records of a stream."""
        return list(islice(self.records(stream), limit))

    def check(self) -> list[CheckResult]:
        """Per stream: which files match, and whether the first record reads and validates."""
        results = [CheckResult("settings", True, f"{len(self.streams)} streams defined")]
        for name, decl in self.streams.items():
            label = f"stream {name}"
            if not self.stream_settings(name).enabled:
                results.append(CheckResult(label, True, "disabled"))
                continue
            try:
                files = self.files(name)
                first = self.sample(name)
                for record in first:
                    decl.model.model_validate(record)
            except LimsyncError as exc:
                results.append(CheckResult(label, False, str(exc)))
            except Exception as exc:  # a stream failure is reported, whatever it is
                results.append(CheckResult(label, False, f"{type(exc).__name__}: {exc}"))
            else:
                detail = f"{len(files)} file(s), first: {self.label(files[0])}"
                if not first:
                    detail += ", no records"
                results.append(CheckResult(label, True, detail))
        return results


def _key_getter(key: Sequence[str]) -> Callable[[Record], tuple[Any, ...]]:
    if len(key) == 1:
        (column,) = key
        return lambda record: (record.get(column),)
    return lambda record: tuple(record.get(c) for c in key)


def _hashable(
    key_of: Callable[[Record], tuple[Any, ...]],
) -> Callable[[Record], tuple[Any, ...]]:
    """``key_of`` whose keys can go in a set: JSON lists or objects as key values by repr."""

    def key(record: Record) -> tuple[Any, ...]:
        k = key_of(record)
        try:
            hash(k)
        except TypeError:
            return ("#repr", repr(k))
        return k

    return key


def _content(record: Record) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in META_FIELDS}


def _pages(records: Iterator[Record], size: int) -> Iterator[Page]:
    while page := list(islice(records, size)):
        yield page


def _require_openpyxl(where: str) -> None:
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{where}: reading .xlsx files needs openpyxl: pip install 'limsync[excel]'"
        ) from None
