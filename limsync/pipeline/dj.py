"""Recompute a lab's own DataJoint tables after a sync (the optional ``datajoint`` extra).

The configuration names DataJoint table classes by import path (``mylab.ephys.SpikeSorting``).
After a sync, :func:`refresh_datajoint` takes the changed keys of limsync's tables (from the
change outbox) and, for each configured Computed or Imported table:

1. finds the affected keys: the table's ``key_source`` keys (and its existing rows) that depend
   on a changed upstream key, by DataJoint restriction with the changed keys' dicts, in batches;
2. with ``on_change = "recompute"``, deletes the rows that depend on *updated* upstream keys
   (leaves first, all tables in one transaction, with DataJoint's own cascading delete, so the
   lab's tables further downstream go too);
3. clears ``error`` and ``reserved`` entries of those keys in the table's job queue
   (``~~<table>``), which would otherwise keep the keys from ever being computed again;
4. then either calls ``populate(keys, reserve_jobs=True, suppress_errors=True)``
   (``action = "populate"``) and reports each ``make`` error with its key, or only queues the
   keys as ``pending`` jobs (``action = "jobs"``) for the lab's own workers.

DataJoint is imported lazily: without it, a :class:`ConfigError` names the extra to install.
DataJoint is pointed at the same server as limsync's database; the password is passed to it and
never logged or put in a message.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from limsync.errors import ConfigError, LimsyncError, PopulateError
from limsync.pipeline.database import Database, safe_url

log = logging.getLogger(__name__)

# Keys per DataJoint restriction: a list of dicts becomes one OR of ANDs in SQL.
BATCH = 500
CLEARED_STATUSES = ("error", "reserved")
# DataJoint's own name for the local server in its config is "localhost".
_LOCAL = {"localhost", "127.0.0.1", "::1"}

Change = Literal["insert", "update", "delete"]


class DataJointSettings(BaseModel):
    """``[populate.datajoint]``: the lab's DataJoint tables that limsync keeps up to date."""

    model_config = ConfigDict(extra="forbid")

    tables: list[str] = Field(
        default_factory=list, description='table classes by import path: "mylab.ephys.Sorting"'
    )
    action: Literal["populate", "jobs"] = Field(
        "populate", description="populate the affected keys here, or only queue their jobs"
    )
    on_change: Literal["recompute", "keep"] = Field(
        "recompute", description="delete rows that depend on updated upstream keys, or keep them"
    )


@dataclass
class TableRefresh:
    """What happened to one configured DataJoint table."""

    table: str  # the import path from the configuration
    full_table_name: str = ""
    affected: int = 0  # key_source keys that depend on a changed upstream key
    deleted: int = 0  # stale rows deleted (their DataJoint dependants went with them)
    jobs_cleared: int = 0  # error/reserved job entries removed for affected keys
    populated: int = 0  # successful make() calls (action "populate")
    queued: int = 0  # pending jobs added for the lab's workers (action "jobs")
    errors: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (key, message)
    error: str | None = None  # the table could not be populated or queued at all

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "table": self.table,
            "full_table_name": self.full_table_name,
            "affected": self.affected,
            "deleted": self.deleted,
            "jobs_cleared": self.jobs_cleared,
            "populated": self.populated,
            "queued": self.queued,
            # The first 100 (the run log keeps this); error_count says how many there were.
            "errors": [{"key": k, "message": m} for k, m in self.errors[:100]],
            "error_count": len(self.errors),
            "error": self.error,
        }


@dataclass
class DataJointReport:
    """Per configured table: deleted, populated, queued, and every error with its key."""

    action: str
    tables: dict[str, TableRefresh] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no make() failed and no table failed as a whole."""
        return all(not t.errors and t.error is None for t in self.tables.values())

    @property
    def errors(self) -> list[tuple[str, dict[str, Any], str]]:
        """Every error as (table, key, message); a table-wide failure has an empty key."""
        out = [(name, k, m) for name, t in self.tables.items() for k, m in t.errors]
        out += [(name, {}, t.error) for name, t in self.tables.items() if t.error]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"action": self.action, "tables": [t.to_dict() for t in self.tables.values()]}


def import_datajoint() -> Any:
    """The ``datajoint`` module, or a ConfigError naming the extra to install."""
    try:
        with warnings.catch_warnings():
            # It warns on import when there is no datajoint.json (limsync configures it) and
            # about its own deprecated submodules; neither concerns the user.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("datajoint")
    except ImportError:
        raise ConfigError(
            "populate.datajoint needs the datajoint package: pip install 'limsync[datajoint]'"
        ) from None


def configure_datajoint(dj: Any, db: Database) -> None:
    """Point DataJoint's configuration at ``db``'s server, before the lab's modules connect."""
    if db.dialect not in ("mysql", "postgresql"):
        raise ConfigError(
            f"populate.datajoint: DataJoint runs on MySQL/MariaDB or PostgreSQL, not "
            f"{db.dialect} ({safe_url(db.url)})"
        )
    url = db.url
    dj.config["database.backend"] = db.dialect
    dj.config["database.host"] = url.host or "localhost"
    dj.config["database.port"] = _default_port(db)
    dj.config["database.user"] = url.username or ""
    dj.config["database.password"] = url.password or ""
    if db.dialect == "postgresql":
        dj.config["database.name"] = url.database or "postgres"
    # DataJoint 2.x keeps its shared connection (the one dj.Schema uses by default) here.
    instance = importlib.import_module("datajoint.instance")
    shared = getattr(instance, "_singleton_connection", None)
    if shared is not None and not _same_server(shared.conn_info, db):
        # It points elsewhere: the lab's modules imported from now on must connect to
        # limsync's server (ones imported before are checked per table).
        try:
            dj.conn(reset=True)
        except ImportError as exc:  # e.g. DataJoint's PostgreSQL driver (psycopg2) missing
            raise ConfigError(f"populate.datajoint: DataJoint cannot connect: {exc}") from None


def load_table(path: str) -> Any:
    """The DataJoint table class at ``package.module.Class`` (an auto-populated one)."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"populate.datajoint.tables: {path!r} is not module.Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"populate.datajoint.tables: cannot import {module_name!r} for {path!r}: {exc}"
        ) from None
    except Exception as exc:
        # The lab's module connects and declares at import: say whose failure it is.
        raise PopulateError(
            f"populate.datajoint.tables: importing {module_name!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"populate.datajoint.tables: {module_name!r} has no {attr!r}")
    dj = import_datajoint()
    if not (isinstance(cls, type) and issubclass(cls, dj.autopopulate.AutoPopulate)):
        raise ConfigError(
            f"populate.datajoint.tables: {path!r} is not a DataJoint Computed or Imported table"
        )
    return cls


def _default_port(db: Database) -> int:
    return db.url.port or (3306 if db.dialect == "mysql" else 5432)


def _same_server(info: Mapping[str, Any], db: Database) -> bool:
    """True when a DataJoint connection's host, port and user are those of ``db``."""

    def norm(host: str | None) -> str:
        host = host or "localhost"
        return "localhost" if host in _LOCAL else host

    url = db.url
    mine = (norm(url.host), _default_port(db), url.username or "")
    return (norm(info["host"]), int(info["port"] or 0), info["user"]) == mine


def _check_server(path: str, table: Any, db: Database) -> None:
    info = table.connection.conn_info
    if not _same_server(info, db):
        raise ConfigError(
            f"populate.datajoint.tables: {path!r} is connected to "
            f"{info['user']}@{info['host']}:{info['port']}, but limsync's database is "
            f"{safe_url(db.url)}; configure DataJoint for the same server"
        )


def _chunks(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Plan:
    path: str
    table: Any  # an instance of the DataJoint class
    depth: int  # number of ancestors: parents sort before children
    todo: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    stale: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)


def _add(target: dict[tuple[Any, ...], dict[str, Any]], pk: Sequence[str], keys: Any) -> None:
    for k in keys:
        key = {a: k[a] for a in pk}
        target[tuple(key[a] for a in pk)] = key


def _upstream(
    db: Database, plan: _Plan, changed: Mapping[str, Sequence[tuple[dict[str, Any], str]]]
) -> Iterator[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    """(full table name, updated keys, inserted keys) of each changed ancestor of the table."""
    conn = plan.table.connection
    ancestors = nx.ancestors(conn.dependencies, plan.table.full_table_name)
    for qualname, items in changed.items():
        schema, _, name = qualname.partition(".")
        full = conn.adapter.make_full_table_name(db.physical_schema(schema), name)
        if full in ancestors:  # other tables' changes cannot concern this one
            updated = [dict(k) for k, c in items if c == "update"]
            inserted = [dict(k) for k, c in items if c == "insert"]
            yield full, updated, inserted


def _find_stale(
    dj: Any, db: Database, plan: _Plan, changed: Mapping[str, Sequence[tuple[dict[str, Any], str]]]
) -> None:
    """Fill ``plan.stale``: the table's rows that depend on an updated upstream key."""
    table = plan.table
    source_pk = set(table.key_source.primary_key)
    pk = list(table.primary_key)
    for full, updated, _ in _upstream(db, plan, changed):
        for batch in _chunks(updated):
            if set(batch[0]) <= source_pk:
                # The usual case: the changed table is a primary ancestor and its key is part
                # of this table's key; restrict by the key dicts directly.
                _add(plan.stale, pk, (table.proj() & list(batch)).keys())
            else:
                # Reached through a secondary reference: DataJoint's cascade restriction says
                # which rows depend on the changed ones, exactly as its delete would.
                seed = dj.FreeTable(table.connection, full) & list(batch)
                for restricted in dj.Diagram.cascade(seed):
                    if restricted.full_table_name == table.full_table_name:
                        _add(plan.stale, pk, restricted.keys())


def _find_todo(
    db: Database, plan: _Plan, changed: Mapping[str, Sequence[tuple[dict[str, Any], str]]]
) -> None:
    """Fill ``plan.todo``: the key_source keys that depend on a new or updated upstream key.

    Run just before the table is populated, after its configured parents were, so that keys
    that reach it through them are there.
    """
    source = plan.table.key_source
    source_pk = list(source.primary_key)
    for _, updated, inserted in _upstream(db, plan, changed):
        keys = updated + inserted
        if not keys or not set(keys[0]) <= set(source_pk):
            continue  # secondary references bring no new keys; their stale rows are added below
        for batch in _chunks(keys):
            _add(plan.todo, source_pk, (source & list(batch)).keys())
    _add(plan.todo, source_pk, plan.stale.values())


def refresh_datajoint(
    db: Database,
    settings: DataJointSettings,
    changed: Mapping[str, Sequence[tuple[dict[str, Any], str]]],
) -> DataJointReport:
    """Recompute (or queue) the configured DataJoint tables for the changed upstream keys.

    ``changed`` maps limsync tables (logical ``schema.table``, without the prefix) to their
    changed keys: (primary-key dict, ``insert`` | ``update`` | ``delete``). Deletes need nothing
    here: limsync's own delete already removed the dependants through the foreign keys.

    Stale rows are deleted in one transaction before anything is computed; a failure there
    raises :class:`PopulateError` and deletes nothing. ``make`` errors are collected in the
    report with their keys (and stay in DataJoint's job queue as ``error``); a table whose
    populate or job refresh fails as a whole gets ``error`` set, and the other tables go on.
    """
    report = DataJointReport(action=settings.action)
    if not settings.tables:
        return report
    dj = import_datajoint()
    configure_datajoint(dj, db)
    plans: list[_Plan] = []
    recompute = settings.on_change == "recompute"
    try:
        for path in settings.tables:
            cls = load_table(path)
            table = cls()
            _check_server(path, table, db)
            conn = table.connection
            # The changed tables' schemas may not be activated by the lab's modules: activate
            # them (without declaring anything), so that ancestry and DataJoint's cascade
            # reach limsync's tables.
            for name in sorted({db.physical_schema(q.partition(".")[0]) for q in changed}):
                if name not in conn.schemas:
                    dj.Schema(name, connection=conn, create_schema=False, create_tables=False)
            conn.dependencies.load(force=True, schema_names=set(conn.schemas))
            depth = len(nx.ancestors(conn.dependencies, table.full_table_name))
            plan = _Plan(path, table, depth)
            if recompute:
                _find_stale(dj, db, plan, changed)
            plans.append(plan)
            report.tables[path] = TableRefresh(path, full_table_name=table.full_table_name)
    except LimsyncError:
        raise
    except Exception as exc:  # DataJoint's or the driver's: say which step failed
        raise PopulateError(
            f"populate.datajoint: finding the affected keys failed: {type(exc).__name__}: {exc}"
        ) from exc
    _delete_stale(dj, plans, report)
    for plan in sorted(plans, key=lambda p: p.depth):  # parents first
        result = report.tables[plan.path]
        try:
            _find_todo(db, plan, changed)
            result.affected = len(plan.todo)
            if not plan.todo:
                continue
            _clear_jobs(plan, result)
            if settings.action == "populate":
                _populate(plan, result)
            else:
                _queue(plan, result)
        except Exception as exc:  # DataJoint or database errors: reported, the rest goes on
            result.error = f"{type(exc).__name__}: {exc}"
            log.error("populate.datajoint: %s failed: %s", plan.path, result.error)
    return report


def _delete_stale(dj: Any, plans: list[_Plan], report: DataJointReport) -> None:
    """Delete every stale row, leaves first, in one transaction per DataJoint connection."""
    todo = [p for p in sorted(plans, key=lambda p: -p.depth) if p.stale]
    if not todo:
        return
    connections = {id(p.table.connection): p.table.connection for p in todo}
    try:
        with contextlib.ExitStack() as stack:
            for conn in connections.values():
                stack.enter_context(conn.transaction)
            for plan in todo:
                keys = list(plan.stale.values())
                for batch in _chunks(keys):
                    # Inside a transaction and without a prompt, DataJoint's delete joins it.
                    n = (plan.table & list(batch)).delete(transaction=True, prompt=False)
                    report.tables[plan.path].deleted += int(n)
    except Exception as exc:
        raise PopulateError(
            f"populate.datajoint: deleting stale rows failed, nothing was deleted: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _clear_jobs(plan: _Plan, result: TableRefresh) -> None:
    """Remove error/reserved job entries of the affected keys, so they are computed again."""
    jobs = plan.table.jobs
    if not jobs.is_declared:
        return
    statuses = ", ".join(f"'{s}'" for s in CLEARED_STATUSES)
    for batch in _chunks(list(plan.todo.values())):
        restricted = (jobs & f"status in ({statuses})").restrict(list(batch), semantic_check=False)
        result.jobs_cleared += int(restricted.delete_quick(get_count=True) or 0)


def _populate(plan: _Plan, result: TableRefresh) -> None:
    for batch in _chunks(list(plan.todo.values())):
        outcome = plan.table.populate(list(batch), reserve_jobs=True, suppress_errors=True)
        result.populated += int(outcome["success_count"])
        for key, message in outcome["error_list"]:
            result.errors.append((dict(key), str(message)))
            log.error("populate.datajoint: %s make(%s) failed: %s", plan.path, dict(key), message)


def _queue(plan: _Plan, result: TableRefresh) -> None:
    for batch in _chunks(list(plan.todo.values())):
        counts = plan.table.jobs.refresh(list(batch))
        result.queued += int(counts["added"])
