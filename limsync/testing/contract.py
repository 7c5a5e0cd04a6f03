"""The connector contract: a pytest test suite every HTTP connector inherits.

An author's whole test file is one small class (this module needs ``pytest``, which limsync
itself does not depend on)::

    from limsync.testing.contract import ConnectorContract

    from mylims_limsync import MyLimsConnector
    from mylims_limsync.fake import make_fake_server


    class TestMyLimsContract(ConnectorContract):
        connector_class = MyLimsConnector
        settings = {"type": "mylims", "token": "s3cret"}  # base_url: the fake server's URL
        server_factory = make_fake_server  # returns a FakeServer (not started)

Each ``test_*`` method is one check, run against a fresh fake server:

=====================================  =========================================================
check                                  what it requires
=====================================  =========================================================
test_settings_reject_empty             ``{"type": ...}`` alone is refused with a ConfigError
                                       naming a missing setting
test_settings_reject_wrong             an unknown setting, a missing required one and a value
                                       of the wrong type are refused, each named, no secret shown
test_streams_declare_valid_keys        key fields are required fields of scalar type (str, int,
                                       UUID, date, datetime, Decimal, enum; not float or lists)
test_streams_yield_valid_records       a full read of every stream yields records (at least one)
                                       that validate against the stream's model
test_keys_unique_and_non_null          no key has a None part; no two records share a key
                                       (keys compared as tuples)
test_pagination_terminates             at a page size of ``page_size`` (2) every stream ends, in
                                       a bounded number of pages, with each record exactly once
test_pagination_detects_loops          when the server ignores paging (answers every request with
                                       the first page) the read fails with a LimsyncError
                                       instead of looping or silently losing records
test_retries_throttling_and_server_    429, 502, 503 and 504 answers are retried and the read
errors                                 succeeds
test_does_not_retry_client_errors      400 and 404 answers fail the read (a retry would hide a
                                       bug and hammer the server)
test_cursor_advances                   after a sync the stream's cursor is stored; after a record
                                       changes, an incremental sync sees it and moves the cursor
test_cursor_round_trip                 the highest cursor value, stored in limsync's state and read
                                       back, starts an incremental read that includes the record(s)
                                       at that value
test_second_sync_writes_nothing        a second full sync of unchanged data reports nothing new,
                                       changed, written, gone or deleted
test_deleted_record_is_detected        after one record is deleted at the source, a full sync
                                       reports exactly one record gone
=====================================  =========================================================

The three sync checks run the connector through the real engine into a temporary SQLite
database. They do not use the connector's default mapping: the contract tests the connector,
not a pipeline, so every stream is written to a generated table ``contract.<stream>`` whose
primary key is the stream's key (one ``varchar(255)`` column per key field, holding
``str(value)``) and whose ``record`` column holds the validated record as JSON.

Fast settings are applied under the author's: no backoff between retries and no client-side
rate limit (``FAST_SETTINGS``). The hooks :meth:`ConnectorContract.delete_record` and
:meth:`ConnectorContract.change_record` change the fake server's data; their defaults work for
a :class:`~limsync.testing.toolkit.RecordServer`, other fakes override them.
"""

from __future__ import annotations

import contextlib
import inspect
import types
import typing
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pydantic
import pytest
from pydantic import Field, SecretStr

from limsync.connectors import Connector, Key, ReadContext, Record, Stream, nothing_known
from limsync.errors import ConfigError, LimsyncError
from limsync.pipeline import Database, Manual, Schema, ledger, state
from limsync.pipeline import Key as KeyColumn
from limsync.pipeline.tables import COLUMN_RE, NAME_RE
from limsync.sync.engine import SyncEngine
from limsync.sync.mapping import Emitted, Mapper, StreamMap
from limsync.sync.report import StreamReport, SyncReport
from limsync.testing.fakeserver import PAGING_PARAMS, FakeServer
from limsync.testing.toolkit import RecordServer

__all__ = ["FAST_SETTINGS", "ConnectorContract", "ContractError", "record_tables"]

#: Applied under the author's settings: retries without waiting, no client-side rate limit.
FAST_SETTINGS: Mapping[str, Any] = {
    "backoff_factor": 0.0,
    "backoff_max": 0.0,
    "rate_limit_per_minute": None,
    "read_timeout": 30.0,
}

#: Key field types that identify a record reliably (compared exactly, hashable, printable).
_KEY_TYPES = (str, int, uuid.UUID, date, datetime, Decimal, Enum)
_WRONG_VALUE = {"wrong": ["type"]}


class ContractError(AssertionError):
    """A contract check failed; the message says which stream and what to fix."""


def _fail(message: str) -> typing.NoReturn:
    raise ContractError(message)


# --- the generic pipeline the sync checks write into --------------------------------------------


def record_tables(streams: Mapping[str, Stream]) -> tuple[Schema, dict[str, StreamMap]]:
    """One generated table per stream, ``contract.<stream>``, keyed by the stream's key.

    Key columns hold ``str(value)`` of each key field; ``record`` holds the validated record as
    JSON. Returns the schema to declare and the stream maps for the engine.
    """
    schema = Schema("contract", "generated by the limsync connector contract")
    maps: dict[str, StreamMap] = {}
    for i, (name, stream) in enumerate(streams.items()):
        table = name if NAME_RE.fullmatch(name) and len(name) <= 60 else f"stream{i}"
        columns: list[str] = []
        for j, field in enumerate(stream.key):
            ok = COLUMN_RE.fullmatch(field) and field != "record" and len(field) <= 60
            column = field if ok and field not in columns else f"key{j}"
            columns.append(column)
        annotations: dict[str, Any] = dict.fromkeys(
            columns, Annotated[str, KeyColumn, Field(max_length=255)]
        )
        annotations["record"] = dict[str, Any]
        cls = type(
            f"Stream{i}",
            (Manual,),
            {
                "__annotations__": annotations,
                "__schema__": schema,
                "__table_name__": table,
                "__module__": __name__,
                "__doc__": f"Records of stream {name}",
            },
        )
        maps[name] = StreamMap(name, (cls,), _row_function(stream, cls, tuple(columns)))
    return schema, maps


def _row_function(
    stream: Stream, table: type[Manual], columns: tuple[str, ...]
) -> Callable[[pydantic.BaseModel], Iterable[Emitted]]:
    def rows(record: pydantic.BaseModel) -> Iterable[Emitted]:
        key = stream.key_of(record)
        row: dict[str, Any] = {
            c: None if v is None else str(v) for c, v in zip(columns, key, strict=True)
        }
        row["record"] = record.model_dump(mode="json")
        yield table, row

    return rows


# --- small helpers ------------------------------------------------------------------------------


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _cursor_order(value: str) -> tuple[int, Any]:
    """Sort key for cursor strings: as datetimes when they are ISO datetimes, else as text."""
    moment = _as_datetime(value)
    if moment is not None:
        # Naive and aware values cannot be compared; aware ones sort by their UTC instant.
        return (1, moment.replace(tzinfo=None) - (moment.utcoffset() or timedelta(0)))
    return (0, value)


def _later(value: Any) -> Any:
    """A cursor value later than ``value``, in the same form (ISO text, date, number)."""
    moment = _as_datetime(value)
    if moment is not None:
        later = moment + timedelta(days=1)
        return later.isoformat() if isinstance(value, str) else later
    if isinstance(value, date):
        return value + timedelta(days=1)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value + 1
    raise ContractError(
        f"cannot make a later value than {value!r}: override change_record() in the contract class"
    )


def _key_type_ok(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _key_type_ok(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return all(_key_type_ok(a) for a in typing.get_args(annotation) if a is not type(None))
    return (
        isinstance(annotation, type)
        and issubclass(annotation, _KEY_TYPES)
        and not issubclass(annotation, float)
    )


def _summary(sr: StreamReport) -> str:
    return (
        f"read {sr.read}, new {sr.new}, changed {sr.changed}, unchanged {sr.unchanged}, "
        f"quarantined {sr.quarantined}, gone {sr.gone}, deleted {sr.deleted}, "
        f"rows written {sr.rows_written}"
    )


class _PageBudgetExceededError(Exception):
    pass


# --- the contract -------------------------------------------------------------------------------


class ConnectorContract:
    """Base class of a connector's contract tests; see the module docstring.

    Set ``connector_class``, ``settings`` and ``server_factory``; optionally the other class
    attributes below, and override :meth:`delete_record` / :meth:`change_record` for a fake
    server that is not a :class:`~limsync.testing.toolkit.RecordServer`.
    """

    connector_class: ClassVar[type[Connector]]
    """The connector under test."""
    settings: ClassVar[Mapping[str, Any]]
    """Valid settings, as in ``limsync.toml`` (without the fake server's URL)."""
    server_factory: ClassVar[Callable[[], FakeServer]]
    """Returns a new, not yet started fake server with data for every tested stream."""
    url_setting: ClassVar[str | None] = "base_url"
    """The setting that receives the fake server's URL (None: the connector has none)."""
    contract_streams: ClassVar[Sequence[str] | None] = None
    """The streams to check (default: all of the connector's streams)."""
    page_size: ClassVar[int] = 2
    """The small page size the pagination checks read with."""
    delete_stream: ClassVar[str | None] = None
    """The stream whose delete detection is checked (default: the first without a parent)."""
    max_pages: ClassVar[int] = 10_000
    """A read yielding more pages than this is taken to loop."""

    # --- hooks -----------------------------------------------------------------------------------

    def delete_record(self, server: FakeServer, connector: Connector, stream: str) -> None:
        """Delete one record of ``stream`` at the source (default: a RecordServer's last)."""
        path = self._record_path(server, connector, stream, "delete_record")
        assert isinstance(server, RecordServer)
        records = server.records(path)
        if not records:
            _fail(f"stream {stream!r}: the fake server has no record to delete")
        server.remove(path, server.key_of(path, records[-1]))

    def change_record(self, server: FakeServer, connector: Connector, stream: str) -> None:
        """Change one record of ``stream`` so that its cursor field moves forward.

        The default, for a RecordServer, sets the cursor field of the record with the highest
        value to a later one (a day later, or one more).
        """
        path = self._record_path(server, connector, stream, "change_record")
        assert isinstance(server, RecordServer)
        cursor = connector.stream(stream).cursor
        assert cursor is not None
        records = [r for r in server.records(path) if r.get(cursor.field) is not None]
        if not records:
            _fail(f"stream {stream!r}: no record of the fake server has {cursor.field!r}")
        latest = max(records, key=lambda r: _cursor_order(str(r[cursor.field])))
        server.update(
            path, server.key_of(path, latest), **{cursor.field: _later(latest[cursor.field])}
        )

    def _record_path(self, server: FakeServer, connector: Connector, stream: str, hook: str) -> str:
        if not isinstance(server, RecordServer):
            _fail(
                f"{type(server).__name__} is not a RecordServer: override {hook}() in "
                f"{type(self).__name__} to change its data"
            )
        return connector.stream(stream).path

    # --- building blocks -------------------------------------------------------------------------

    def new_server(self) -> FakeServer:
        """A new fake server from ``server_factory`` (not started)."""
        factory: Any = inspect.getattr_static(type(self), "server_factory", None)
        if factory is None:
            _fail(f"{type(self).__name__}: set server_factory to a function returning a FakeServer")
        if isinstance(factory, staticmethod | classmethod):
            factory = factory.__get__(None, type(self))
        server = factory()
        if not isinstance(server, FakeServer):
            _fail(f"server_factory returned {type(server).__name__}, not a FakeServer")
        return server

    @contextlib.contextmanager
    def serve(self) -> Iterator[FakeServer]:
        """A started fake server, stopped afterwards."""
        server = self.new_server()
        with server:
            yield server

    @pytest.fixture
    def contract_server(self) -> Iterator[FakeServer]:
        """pytest fixture: a fresh, started fake server per check."""
        with self.serve() as server:
            yield server

    def settings_for(self, server: FakeServer, **overrides: Any) -> dict[str, Any]:
        """The raw settings for a connector reading ``server``."""
        data: dict[str, Any] = {**FAST_SETTINGS, **self.settings, **overrides}
        fields = self.connector_class.settings_model.model_fields
        if self.url_setting and self.url_setting in fields:
            data[self.url_setting] = server.url
        return {k: v for k, v in data.items() if k in fields or k in self.settings}

    def make_connector(self, server: FakeServer, **overrides: Any) -> Connector:
        """A connector instance reading ``server`` (``overrides``: raw setting changes)."""
        cls = self.connector_class
        parsed = cls.parse_settings(self.settings_for(server, **overrides), name="contract")
        return cls("contract", parsed)

    def streams_of(self, connector: Connector) -> list[str]:
        """The streams the checks cover."""
        names = list(self.contract_streams or connector.streams)
        unknown = [n for n in names if n not in connector.streams]
        if unknown:
            _fail(f"contract_streams names unknown stream(s): {', '.join(unknown)}")
        return names

    def read_all(
        self,
        connector: Connector,
        stream: str,
        *,
        full: bool = True,
        cursor: str | None = None,
        max_pages: int | None = None,
    ) -> list[Record]:
        """Every record one read of ``stream`` yields; ContractError past ``max_pages``."""
        limit = max_pages or self.max_pages
        ctx = ReadContext(full=full, cursor=cursor, known=nothing_known)
        records: list[Record] = []
        for pages, page in enumerate(connector.read(stream, ctx), start=1):
            if pages > limit:
                raise _PageBudgetExceededError(
                    f"stream {stream!r}: the read did not end after {limit} pages "
                    f"({len(records)} records); pagination does not terminate"
                )
            records.extend(page)
        return records

    def validated(self, connector: Connector, stream: str, records: Sequence[Record]) -> list[Any]:
        """The records validated by the stream's model; ContractError naming the first bad one."""
        model = connector.stream(stream).model
        out = []
        for i, record in enumerate(records):
            try:
                out.append(model.model_validate(record))
            except pydantic.ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                    for e in exc.errors(include_url=False)[:3]
                )
                _fail(
                    f"stream {stream!r}: record {i} does not validate against "
                    f"{model.__name__}: {problems}"
                )
        return out

    def keys(self, connector: Connector, stream: str, records: Sequence[Record]) -> list[Key]:
        """The key tuples of the valid records, as the engine computes them.

        Invalid records are left out: the engine quarantines them, and
        ``test_streams_yield_valid_records`` reports them.
        """
        decl = connector.stream(stream)
        out = []
        for record in records:
            try:
                out.append(decl.key_of(decl.model.model_validate(record)))
            except pydantic.ValidationError:
                continue
        return out

    @contextlib.contextmanager
    def pipeline(self, connector: Connector, workdir: Path) -> Iterator[SyncEngine]:
        """An engine syncing ``connector`` into a new SQLite database in ``workdir``."""
        url = f"sqlite:///{workdir / f'contract-{uuid.uuid4().hex[:8]}.db'}"
        db = Database(url, state_schema="limsync")
        try:
            schema, maps = record_tables(connector.streams)
            db.declare(schema)
            mappers = {name: Mapper(db, smap) for name, smap in maps.items()}
            yield SyncEngine(db, connector, mappers, batch_size=100)
        finally:
            db.dispose()

    def sync(self, engine: SyncEngine, streams: Sequence[str], *, full: bool = True) -> SyncReport:
        """One engine run over ``streams``; ContractError when the run itself failed."""
        with engine.connector:
            report = engine.run(streams=list(streams), full=full)
        if report.error:
            _fail(f"the sync run failed: {report.error}")
        return report

    def stored_cursor(self, engine: SyncEngine, stream: str) -> str | None:
        """The cursor the engine committed for ``stream``."""
        st = state.ensure(engine.db)
        with engine.db.engine.connect() as conn:
            return ledger.get_cursor(conn, st, engine.name, stream)

    def cursor_streams(self, connector: Connector) -> list[str]:
        """The checked streams that declare a cursor; skips the check when there are none."""
        names = [s for s in self.streams_of(connector) if connector.stream(s).cursor is not None]
        if not names:
            pytest.skip("no checked stream declares a cursor")
        return names

    def probe_stream(self, connector: Connector) -> str:
        """The stream the HTTP-error checks read: the first checked one without a parent."""
        for name in self.streams_of(connector):
            if connector.stream(name).parent is None:
                return name
        return self.streams_of(connector)[0]

    # --- settings --------------------------------------------------------------------------------

    def _settings_error(self, data: Mapping[str, Any]) -> str | None:
        try:
            self.connector_class.parse_settings(data, name="contract")
        except ConfigError as exc:
            return str(exc)
        return None

    def _secrets(self, server: FakeServer) -> list[str]:
        parsed = self.connector_class.parse_settings(self.settings_for(server), name="contract")
        return [
            value.get_secret_value()
            for name in type(parsed).model_fields
            if isinstance(value := getattr(parsed, name), SecretStr)
            and len(value.get_secret_value()) >= 4
        ]

    def test_settings_reject_empty(self, contract_server: FakeServer) -> None:
        """``{"type": ...}`` alone is refused with a message naming a missing setting."""
        cls = self.connector_class
        message = self._settings_error({"type": cls.type_name})
        if message is None:
            _fail(
                f"{cls.settings_model.__name__} accepts an empty configuration "
                f"({{'type': {cls.type_name!r}}}): make the settings a connector cannot work "
                "without (where to read, credentials) required fields"
            )
        required = [
            n for n, f in cls.settings_model.model_fields.items() if f.is_required() and n != "type"
        ]
        if required and not any(n in message for n in required):
            _fail(f"the error for an empty configuration names none of {required}: {message}")

    def test_settings_reject_wrong(self, contract_server: FakeServer) -> None:
        """Unknown, missing and mistyped settings are refused, each named, no secret echoed."""
        cls = self.connector_class
        valid = self.settings_for(contract_server)
        if (message := self._settings_error(valid)) is not None:
            _fail(f"the contract's own settings are refused: {message}")
        fields = cls.settings_model.model_fields
        cases: list[tuple[str, dict[str, Any]]] = [
            ("no_such_setting", {**valid, "no_such_setting": 1})
        ]
        cases += [
            (n, {k: v for k, v in valid.items() if k != n})
            for n, f in fields.items()
            if f.is_required() and n in valid and n != "type"
        ]
        for name in valid:
            if name in ("type", "streams") or name not in fields:
                continue
            adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
                fields[name].annotation or Any
            )
            try:
                adapter.validate_python(_WRONG_VALUE)
            except pydantic.ValidationError:
                cases.append((name, {**valid, name: _WRONG_VALUE}))
        secrets = self._secrets(contract_server)
        for name, data in cases:
            message = self._settings_error(data)
            if message is None:
                _fail(f"settings with a wrong or missing {name!r} are accepted: {data!r}")
            if name not in message:
                _fail(f"the error for a wrong or missing {name!r} does not name it: {message}")
            if any(secret in message for secret in secrets):
                _fail(f"the error for a wrong or missing {name!r} shows a secret value")

    # --- declarations and records ----------------------------------------------------------------

    def test_streams_declare_valid_keys(self, contract_server: FakeServer) -> None:
        """Key fields are required model fields of a type that identifies records exactly."""
        connector = self.make_connector(contract_server)
        for name in self.streams_of(connector):
            decl = connector.stream(name)
            fields = decl.model.model_fields
            if not decl.key:
                _fail(f"stream {name!r} declares no key")
            for field in decl.key:
                info = fields.get(field)
                if info is None:
                    _fail(f"stream {name!r}: key field {field!r} is not on {decl.model.__name__}")
                if not info.is_required():
                    _fail(
                        f"stream {name!r}: key field {field!r} has a default, so a record "
                        "without it would get a made-up key; make it required"
                    )
                if not _key_type_ok(info.annotation):
                    _fail(
                        f"stream {name!r}: key field {field!r} is {info.annotation!r}; keys "
                        "must be str, int, UUID, date, datetime, Decimal or an enum"
                    )
            if decl.volatile & set(decl.key):
                _fail(f"stream {name!r}: a key field is declared volatile")
            if decl.cursor is not None and decl.cursor.field not in fields:
                _fail(f"stream {name!r}: cursor field {decl.cursor.field!r} is not on the model")

    def test_streams_yield_valid_records(self, contract_server: FakeServer) -> None:
        """A full read of each stream yields at least one record, each one valid."""
        connector = self.make_connector(contract_server)
        with connector:
            for name in self.streams_of(connector):
                records = self.read_all(connector, name)
                if not records:
                    _fail(
                        f"stream {name!r} yielded no records: give the fake server data for it "
                        "(the contract cannot check an empty stream)"
                    )
                self.validated(connector, name, records)

    def test_keys_unique_and_non_null(self, contract_server: FakeServer) -> None:
        """No key has a None part and no two records of a stream share a key (as tuples)."""
        connector = self.make_connector(contract_server)
        with connector:
            for name in self.streams_of(connector):
                keys = self.keys(connector, name, self.read_all(connector, name))
                nulls = [k for k in keys if any(part is None for part in k)]
                if nulls:
                    _fail(
                        f"stream {name!r}: {len(nulls)} record(s) have a null key, e.g. {nulls[0]}"
                    )
                repeated = [k for k, n in Counter(keys).items() if n > 1]
                if repeated:
                    _fail(
                        f"stream {name!r}: {len(repeated)} key(s) are shared by several records, "
                        f"e.g. {repeated[0]}"
                    )

    # --- pagination ------------------------------------------------------------------------------

    def test_pagination_terminates(self, contract_server: FakeServer) -> None:
        """At a small page size each stream ends and yields every record exactly once."""
        connector = self.make_connector(contract_server)
        small = self.make_connector(contract_server, page_size=self.page_size)
        with connector, small:
            for name in self.streams_of(connector):
                expected = Counter(self.keys(connector, name, self.read_all(connector, name)))
                budget = 2 * sum(expected.values()) + 10
                try:
                    got = Counter(
                        self.keys(small, name, self.read_all(small, name, max_pages=budget))
                    )
                except _PageBudgetExceededError as exc:
                    _fail(str(exc))
                if got != expected:
                    lost = sum((expected - got).values())
                    extra = sum((got - expected).values())
                    _fail(
                        f"stream {name!r} at page size {self.page_size}: {lost} record(s) "
                        f"missing and {extra} extra compared with a read at the default size"
                    )

    def test_pagination_detects_loops(self, contract_server: FakeServer) -> None:
        """A server that ignores the paging parameters makes the read fail, not loop."""
        connector = self.make_connector(contract_server, page_size=self.page_size)
        checked = 0
        with connector:
            for name in self.streams_of(connector):
                normal = Counter(self.keys(connector, name, self.read_all(connector, name)))
                count = sum(normal.values())
                if count <= self.page_size:
                    continue  # one page: nothing to repeat
                budget = 2 * count + 10
                contract_server.faults.set(
                    repeat_first_page=True, paging_params=self._paging_params(connector, name)
                )
                try:
                    records = self.read_all(connector, name, max_pages=budget)
                except _PageBudgetExceededError:
                    _fail(
                        f"stream {name!r}: with the server answering every page request with "
                        f"the first page, the read did not end after {budget} pages; detect "
                        "repeated pages (the built-in paginators raise PaginationError)"
                    )
                except LimsyncError:
                    checked += 1  # detected
                    continue
                finally:
                    contract_server.faults.set(repeat_first_page=False)
                if Counter(self.keys(connector, name, records)) == normal:
                    continue  # each listing fit in one page (e.g. one per parent): no repeat
                _fail(
                    f"stream {name!r}: with the server answering every page request with the "
                    f"first page, the read ended normally with {len(records)} of {count} "
                    "records instead of raising PaginationError"
                )
        if not checked:
            _fail(
                f"no stream read more than one page at page_size={self.page_size}: give the "
                "fake server more data so that paging can be checked"
            )

    def _paging_params(self, connector: Connector, stream: str) -> frozenset[str]:
        """The fault's default paging parameters plus those the stream's paginator sends."""
        names = set(PAGING_PARAMS)
        try:
            paginator = connector.paginator_for(stream)
        except NotImplementedError:  # a connector that reads without a paginator
            return frozenset(names)
        for attr in ("limit_param", "offset_param", "page_param", "size_param"):
            value = getattr(paginator, attr, None)
            if isinstance(value, str):
                names.add(value)
        return frozenset(names)

    # --- HTTP errors -----------------------------------------------------------------------------

    def test_retries_throttling_and_server_errors(self, contract_server: FakeServer) -> None:
        """429, 502, 503 and 504 answers are retried; the read then succeeds."""
        connector = self.make_connector(contract_server)
        with connector:
            name = self.probe_stream(connector)
            expected = sorted(map(repr, self.keys(connector, name, self.read_all(connector, name))))
            for status in (429, 502, 503, 504):
                contract_server.reset_counters()
                if status == 429:
                    contract_server.faults.set(throttle=2, retry_after=0)
                else:
                    contract_server.faults.set(error_burst=2, error_status=status)
                try:
                    records = self.read_all(connector, name)
                except LimsyncError as exc:
                    _fail(f"stream {name!r}: two {status} answers were not retried: {exc}")
                finally:
                    contract_server.faults.reset()
                faulted = [r for r in contract_server.request_log if r.fault]
                if len(faulted) != 2:
                    _fail(f"stream {name!r}: the server answered {status} {len(faulted)} times")
                got = sorted(map(repr, self.keys(connector, name, records)))
                if got != expected:
                    _fail(f"stream {name!r}: after retrying {status}, the records differ")

    def test_does_not_retry_client_errors(self, contract_server: FakeServer) -> None:
        """A 400 or 404 answer fails the read with a LimsyncError; it is not retried."""
        connector = self.make_connector(contract_server)
        with connector:
            name = self.probe_stream(connector)
            self.read_all(connector, name)  # authenticated, warmed up
            for status in (400, 404):
                # One error only: a client that retries gets a good answer the second time, so
                # its read succeeds, which is how the retry shows.
                contract_server.faults.set(error_burst=1, error_status=status)
                try:
                    self.read_all(connector, name)
                except LimsyncError:
                    continue
                finally:
                    contract_server.faults.reset()
                _fail(
                    f"stream {name!r}: a {status} answer was retried (the read succeeded); "
                    "client errors must fail the read"
                )

    # --- cursors ---------------------------------------------------------------------------------

    def test_cursor_advances(self, contract_server: FakeServer, tmp_path: Path) -> None:
        """A sync stores the cursor; after a change, an incremental sync sees it and moves it."""
        connector = self.make_connector(contract_server)
        for name in self.cursor_streams(connector):
            with self.pipeline(connector, tmp_path) as engine:
                first = self.sync(engine, [name]).streams[0]
                if first.error:
                    _fail(f"stream {name!r}: the first sync failed: {first.error}")
                before = self.stored_cursor(engine, name)
                if before is None:
                    _fail(
                        f"stream {name!r}: no cursor was stored after a sync of {first.read} "
                        "records; cursor_value() gives None for every record"
                    )
                self.change_record(contract_server, connector, name)
                second = self.sync(engine, [name], full=False).streams[0]
                if second.error:
                    _fail(f"stream {name!r}: the incremental sync failed: {second.error}")
                after = self.stored_cursor(engine, name)
                if second.changed + second.new < 1:
                    _fail(
                        f"stream {name!r}: the incremental sync after a change did not see "
                        f"it ({_summary(second)})"
                    )
                if after is None or _cursor_order(after) <= _cursor_order(before):
                    _fail(
                        f"stream {name!r}: the cursor did not advance after a change "
                        f"({before!r} -> {after!r})"
                    )

    def test_cursor_round_trip(self, contract_server: FakeServer, tmp_path: Path) -> None:
        """The highest cursor, stored and read back, starts a read that includes its record."""
        connector = self.make_connector(contract_server)
        with connector, self.pipeline(connector, tmp_path) as engine:
            for name in self.cursor_streams(connector):
                records = self.read_all(connector, name)
                values = [(connector.cursor_value(name, r), r) for r in records]
                present = [(v, r) for v, r in values if v is not None]
                if not present:
                    _fail(f"stream {name!r}: cursor_value() gives None for every record")
                top = max((v for v, _ in present), key=_cursor_order)
                st = state.ensure(engine.db)
                with engine.db.transaction() as conn:
                    ledger.set_cursor(conn, st, connector.name, name, top)
                back = self.stored_cursor(engine, name)
                if back != top:
                    _fail(f"stream {name!r}: cursor {top!r} came back from storage as {back!r}")
                decl = connector.stream(name)
                try:
                    since = self.read_all(connector, name, full=False, cursor=back)
                except LimsyncError as exc:
                    _fail(
                        f"stream {name!r}: an incremental read from cursor {back!r} failed: {exc}"
                    )
                wanted = {repr(decl.key_from_raw(r)) for v, r in present if v == top}
                got = {repr(k) for k in self.keys(connector, name, since)}
                missing = wanted - got
                if missing:
                    _fail(
                        f"stream {name!r}: an incremental read from cursor {back!r} misses the "
                        f"record(s) at that value ({sorted(missing)[0]}); filter with >=, "
                        "not >, and subtract the lookback"
                    )

    # --- syncs -----------------------------------------------------------------------------------

    def test_second_sync_writes_nothing(self, contract_server: FakeServer, tmp_path: Path) -> None:
        """A second full sync of unchanged data reports nothing new, changed, written or gone."""
        connector = self.make_connector(contract_server)
        names = self.streams_of(connector)
        with self.pipeline(connector, tmp_path) as engine:
            first = self.sync(engine, names)
            for sr in first.streams:
                if sr.error:
                    _fail(f"stream {sr.stream!r}: the first sync failed: {sr.error}")
            if sum(sr.new for sr in first.streams) == 0:
                _fail("the first sync stored no record")
            second = self.sync(engine, names)
            for sr in second.streams:
                wrote = sr.new or sr.changed or sr.rows_written or sr.gone or sr.deleted
                if sr.error or wrote:
                    detail = sr.error or _summary(sr)
                    hint = (
                        "; a field that changes on every read (a timestamp, a computed value) "
                        "must be declared volatile"
                        if sr.changed
                        else ""
                    )
                    _fail(f"stream {sr.stream!r}: the second identical sync: {detail}{hint}")

    def test_deleted_record_is_detected(self, contract_server: FakeServer, tmp_path: Path) -> None:
        """After one record is deleted at the source, a full sync reports exactly one gone."""
        connector = self.make_connector(contract_server)
        name = self.delete_stream or self.probe_stream(connector)
        with self.pipeline(connector, tmp_path) as engine:
            first = self.sync(engine, [name]).streams[0]
            if first.error:
                _fail(f"stream {name!r}: the first sync failed: {first.error}")
            self.delete_record(contract_server, connector, name)
            second = self.sync(engine, [name]).streams[0]
            if second.error:
                _fail(f"stream {name!r}: the sync after a delete failed: {second.error}")
            if second.gone != 1:
                _fail(
                    f"stream {name!r}: one record was deleted at the source, but the sync "
                    f"reports {second.gone} gone ({_summary(second)}); confirm_gone() must "
                    "return the keys that are really gone"
                )
