"""The contract's harness: the author's class attributes, the data-changing hooks, and the
building blocks the checks share (a connector per fake server, full reads, an engine on SQLite).
"""

from __future__ import annotations

import contextlib
import inspect
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import pytest

from limsync.connectors import Connector, Key, ReadContext, Record, nothing_known
from limsync.pipeline import Database, ledger, state
from limsync.sync.engine import SyncEngine
from limsync.sync.mapping import Mapper
from limsync.sync.report import SyncReport
from limsync.testing.contract.support import (
    FAST_SETTINGS,
    PageBudgetExceededError,
    cursor_order,
    fail,
    later,
)
from limsync.testing.contract.tables import record_tables
from limsync.testing.fakeserver import FakeServer
from limsync.testing.toolkit import RecordServer


class ContractHarness:
    """The class attributes, hooks and building blocks every check uses (see the package
    docstring for the attributes an author sets).

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
            fail(f"stream {stream!r}: the fake server has no record to delete")
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
            fail(f"stream {stream!r}: no record of the fake server has {cursor.field!r}")
        latest = max(records, key=lambda r: cursor_order(str(r[cursor.field])))
        server.update(
            path, server.key_of(path, latest), **{cursor.field: later(latest[cursor.field])}
        )

    def _record_path(self, server: FakeServer, connector: Connector, stream: str, hook: str) -> str:
        if not isinstance(server, RecordServer):
            fail(
                f"{type(server).__name__} is not a RecordServer: override {hook}() in "
                f"{type(self).__name__} to change its data"
            )
        return connector.stream(stream).path

    # --- building blocks -------------------------------------------------------------------------

    def new_server(self) -> FakeServer:
        """A new fake server from ``server_factory`` (not started)."""
        factory: Any = inspect.getattr_static(type(self), "server_factory", None)
        if factory is None:
            fail(f"{type(self).__name__}: set server_factory to a function returning a FakeServer")
        if isinstance(factory, staticmethod | classmethod):
            factory = factory.__get__(None, type(self))
        server = factory()
        if not isinstance(server, FakeServer):
            fail(f"server_factory returned {type(server).__name__}, not a FakeServer")
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
            fail(f"contract_streams names unknown stream(s): {', '.join(unknown)}")
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
                raise PageBudgetExceededError(
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
                fail(
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
            fail(f"the sync run failed: {report.error}")
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
