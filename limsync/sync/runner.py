"""The library entry points behind ``limsync sync`` and ``limsync plan``.

Builds the database, the connector and its stream mappings from :class:`Settings`, declares the
connector's default pipeline, and runs the engine. A connector type names its default mapping
module with a ``default_mapping`` class attribute (``"package.module"``; the module defines
``SCHEMAS`` and ``STREAM_MAPS``); the built-in ones are listed here.
"""

from __future__ import annotations

import importlib
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
from limsync.sync.engine import Progress, SyncEngine
from limsync.sync.mapping import Mapper, StreamMap
from limsync.sync.report import SyncReport

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
    module = mapping_module(cls)
    db.declare(*module.SCHEMAS)
    maps: dict[str, StreamMap] = module.STREAM_MAPS
    connector = cls(name, csettings, session=session)
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
) -> list[SyncReport]:
    """Sync the selected connectors (all by default); one report per connector.

    ``select`` items are connector names or ``name.stream``. With ``dry_run`` everything runs
    inside one transaction that is rolled back: the reports say what would change.
    """
    selection = parse_selection(settings, select)
    own_db = db is None
    database = db or open_database(settings)
    reports = []
    try:
        for name, streams in selection.items():
            prepared = prepare(settings, database, name, progress=progress)
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
                        streams=streams, full=full, dry_run=dry_run, force_delete=force_delete
                    )
                )
    finally:
        if own_db:
            database.dispose()
    return reports
