"""The library entry points behind ``limsync sync`` and ``limsync plan``.

Builds the database, the connector and its stream mappings from :class:`Settings`, declares the
connector's default pipeline, and runs the engine. A connector type names its default mapping
module with a ``default_mapping`` class attribute (``"package.module"``; the module defines
``SCHEMAS`` and ``STREAM_MAPS``); the built-in ones are listed here.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from limsync.config.settings import Settings
from limsync.connectors import registry
from limsync.connectors.base import Connector
from limsync.errors import ConfigError, DatabaseUnreachableError
from limsync.pipeline.database import Database, safe_url
from limsync.pipeline.state import ensure
from limsync.sync.declarative import declare_pipelines, stream_map
from limsync.sync.engine import Progress, SyncEngine
from limsync.sync.mapping import Mapper, StreamMap
from limsync.sync.report import SyncReport

log = logging.getLogger(__name__)

BUILTIN_MAPPINGS = {"alyx": "limsync.sync.maps.alyx"}


def open_database(settings: Settings) -> Database:
    """The configured database, with limsync's bookkeeping tables ready."""
    db = Database(
        settings.database_url,
        schema_prefix=settings.schema_prefix,
        state_schema=settings.state_schema,
    )
    try:
        ensure(db)
    except sa.exc.DBAPIError as exc:
        db.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise DatabaseUnreachableError(
            f"cannot use database {safe_url(db.url)}: {reason}"
        ) from None
    return db


def has_default_mapping(connector_cls: type[Connector]) -> bool:
    """True when a connector type comes with a default pipeline and stream maps."""
    return bool(
        getattr(connector_cls, "default_mapping", None)
        or connector_cls.type_name in BUILTIN_MAPPINGS
    )


def mapping_module(connector_cls: type[Connector]) -> ModuleType:
    """The module holding a connector type's default pipeline and stream maps."""
    path = getattr(connector_cls, "default_mapping", None) or BUILTIN_MAPPINGS.get(
        connector_cls.type_name
    )
    if not path:
        raise ConfigError(
            f"connector type {connector_cls.type_name!r} has no default mapping; "
            "give it a default_mapping module"
        )
    return importlib.import_module(path)


@dataclass
class Prepared:
    """A connector instance ready to sync: its connector, mappers and engine."""

    name: str
    connector: Connector
    engine: SyncEngine


def prepare(
    settings: Settings,
    db: Database,
    name: str,
    *,
    progress: Progress | None = None,
    session: Any = None,
) -> Prepared:
    """Build connector, mappers and engine for one configured instance; declare its tables."""
    csettings = settings.connector_settings(name)
    cls = registry.get(csettings.type)
    declarative = settings.mappings.get(name, {})
    if settings.pipelines:
        declare_pipelines(db, settings.pipelines, BUILTIN_MAPPINGS)
    maps: dict[str, StreamMap] = {}
    if not declarative or has_default_mapping(cls):
        if not has_default_mapping(cls):
            raise ConfigError(
                f"connector {name!r} (type {cls.type_name}) has no default mapping: map its "
                f"streams with [[mappings.{name}.STREAM]] tables (see docs/migrations.md)"
            )
        module = mapping_module(cls)
        db.declare(*module.SCHEMAS)
        maps.update(module.STREAM_MAPS)
    connector = cls(name, csettings, session=session)
    for stream, tables in declarative.items():
        if stream not in connector.streams:
            raise ConfigError(
                f"mappings.{name}.{stream}: connector {name!r} has no stream {stream!r} "
                f"(streams: {', '.join(connector.streams)})"
            )
        maps[stream] = stream_map(db, name, stream, tables, connector.stream(stream).model)
    mappers = {}
    for stream in connector.streams:
        if stream not in maps or not connector.stream_settings(stream).enabled:
            continue
        overrides = connector.stream_settings(stream).tables
        mappers[stream] = Mapper(db, maps[stream], overrides)
    engine = SyncEngine(db, connector, mappers, batch_size=settings.batch_size, progress=progress)
    return Prepared(name, connector, engine)


def parse_selection(
    settings: Settings, select: Sequence[str] | None
) -> dict[str, list[str] | None]:
    """``["alyx", "pyrat.animals"]`` -> ``{"alyx": None, "pyrat": ["animals"]}`` (None: all)."""
    if not select:
        return dict.fromkeys(settings.connectors)
    out: dict[str, list[str] | None] = {}
    for item in select:
        name, _, stream = item.partition(".")
        if name not in settings.connectors:
            known = ", ".join(sorted(settings.connectors)) or "none configured"
            raise ConfigError(f"unknown connector {name!r} (configured: {known})")
        if not stream:
            out[name] = None
        elif out.get(name, []) is not None:
            out.setdefault(name, []).append(stream)  # type: ignore[union-attr]
    return out


def sync(
    settings: Settings,
    select: Sequence[str] | None = None,
    *,
    full: bool = True,
    dry_run: bool = False,
    force_delete: bool = False,
    progress: Progress | None = None,
    db: Database | None = None,
    stop: threading.Event | None = None,
    kind: str = "sync",
) -> list[SyncReport]:
    """Sync the selected connectors (all by default); one report per connector.

    ``select`` items are connector names or ``name.stream``. With ``dry_run`` everything runs
    inside one transaction that is rolled back: the reports say what would change. When
    ``stop`` is set, the running engine stops between batches and later connectors are skipped.
    After a real sync, ``[populate]`` with ``after_sync`` consumes the change outbox and
    recomputes what changed (:func:`populate_after_sync`); its report is the ``populate`` of
    the last connector's report.
    """
    selection = parse_selection(settings, select)
    own_db = db is None
    database = db or open_database(settings)
    reports = []
    try:
        for name, streams in selection.items():
            if stop is not None and stop.is_set():
                break
            prepared = prepare(settings, database, name, progress=progress)
            prepared.engine.stop = stop
            if streams is not None:
                unknown = sorted(set(streams) - set(prepared.engine.mappers))
                if unknown:
                    raise ConfigError(
                        f"connector {name!r} has no stream(s) {', '.join(unknown)} "
                        f"(streams: {', '.join(prepared.engine.mappers)})"
                    )
            with prepared.connector:
                prepared.connector.open()
                reports.append(
                    prepared.engine.run(
                        streams=streams,
                        full=full,
                        dry_run=dry_run,
                        force_delete=force_delete,
                        kind=kind,
                    )
                )
        if not dry_run and reports and not (stop is not None and stop.is_set()):
            reports[-1].populate = populate_after_sync(settings, database)
    finally:
        if own_db:
            database.dispose()
    return reports


def populate_after_sync(settings: Settings, db: Database) -> Any:
    """Hand the change outbox to populate (``[populate] after_sync``); None when not configured.

    Returns a :class:`limsync.pipeline.populate.PopulateReport`: what was recomputed and made.
    """
    cfg = settings.populate
    if not cfg.after_sync or not (cfg.tables or cfg.datajoint.tables):
        return None
    from limsync.pipeline.populate import after_sync, load_tables

    report = after_sync(
        db,
        load_tables(cfg.tables),
        workers=cfg.workers,
        reservation_timeout=cfg.reservation_timeout,
        datajoint=cfg.datajoint,
    )
    for t in report.tables:
        log.info("populate %s: %d made, %d failed", t.table, t.made, t.failed)
    return report
