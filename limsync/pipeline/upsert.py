"""Batched, idempotent upsert that reports exactly what it changed.

Per batch (bounded by rows, bound parameters and bytes, so no statement exceeds MySQL's
``max_allowed_packet``), at most two statements:

1. the *diff* (see :mod:`upsert_sql`): the batch, sent as a table, joined with the stored rows
   by key; the database compares the rows, null-safely and byte for byte, and returns only the
   rows that are new or differ, with the stored values of the latter and a missing-parent flag
   per foreign key. An unchanged batch transfers and decodes nothing.
2. one multi-row ``INSERT ... ON DUPLICATE KEY UPDATE`` / ``ON CONFLICT DO UPDATE`` carrying
   only the new and changed rows; none at all when there are none.

Rows the database calls different are checked once more in parameter space (see
:mod:`codecs`): a stored value in another spelling of the same value (JSON written by another
tool, a SQLite datetime without microseconds) is not rewritten. Unchanged rows are never
rewritten, and the :class:`ChangeSet` lists the exact keys inserted, updated and unchanged on
every dialect, relative to the table before the call, however the rows were batched.

:func:`insert.insert_new` is its shortcut for rows the caller holds to be new (a first load);
both build on :mod:`batch` (the per-table plan, encoding, byte limits, errors).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from limsync.errors import MissingParentError
from limsync.pipeline.batch import (
    Encoded,
    Plan,
    encode_unique,
    literal_rows,
    no_params,
    plan_for,
    row_error_from_db,
    send_insert,
    split_by_bytes,
    table_spec,
)
from limsync.pipeline.changes import (
    DEFAULT_MEMORY_KEYS,
    INSERTED,
    UNCHANGED,
    UPDATED,
    ChangeSet,
    Key,
    Outcome,
    digest,
)
from limsync.pipeline.codecs import Codec
from limsync.pipeline.tables import Table, TableSpec
from limsync.pipeline.tries import Tries
from limsync.pipeline.upsert_sql import (
    MAX_PARAMS,
    diff_sql,
    diff_tail,
    in_sql,
    params,
    placeholder,
    values_row,
    write_sql,
    write_tail,
)
from limsync.pipeline.validation import validate_batch, validate_row, validate_rows

if TYPE_CHECKING:
    from limsync.pipeline.database import Database

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_MEMORY_KEYS",
    "MAX_PARAMS",
    "ChangeSet",
    "Key",
    "missing_parents",
    "placeholder",
    "select_by_keys",
    "upsert",
    "validate_row",
    "validate_rows",
]

DEFAULT_BATCH_ROWS = 1000
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024  # far below MySQL's 16 MB default max_allowed_packet


def upsert(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    rows: Iterable[Mapping[str, Any]],
    *,
    validate: bool = True,
    check_parents: bool = True,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    memory_keys: int | None = DEFAULT_MEMORY_KEYS,
    optimistic: bool = True,
) -> ChangeSet:
    """Insert new rows and update changed ones, inside the caller's transaction.

    ``rows`` may be any iterable (it is consumed in batches, so memory stays bounded). A row that
    fails validation, or references a missing parent, raises :class:`RowError` /
    :class:`MissingParentError` naming table, key and column; the caller's transaction then
    rolls back, so nothing of the batch is written. Later duplicates of a key win.

    The ChangeSet compares the table before and after the call: each key appears once, as
    inserted (absent before), updated (its final row differs from the row stored before the
    call) or unchanged, however the rows were split into batches.

    To keep that exact, the call remembers every key it has seen. Up to ``memory_keys`` of them
    (default :data:`DEFAULT_MEMORY_KEYS`) are held in memory; beyond that they move to a
    temporary SQLite file (see :mod:`changes`), so memory does not grow with the number of rows
    (``None``: never spill). The ChangeSet then reads its lists from that file: ``close()`` it,
    or use it in a ``with`` block, to delete the file at once; otherwise it goes when the
    ChangeSet is garbage-collected.

    ``optimistic``: first try each batch as a plain ``INSERT`` in a savepoint, which is all a
    batch of new rows needs (a first load: no diff is sent); a batch holding a stored key, or
    a bad row, is refused whole and takes the diff instead. After a refusal the next tries are
    spaced out (:class:`~limsync.pipeline.tries.Tries`), so upserting rows that are mostly
    stored pays for a few refused statements only. Not tried where the database would accept
    what the diff refuses: a missing parent when it does not enforce foreign keys, or a parent
    in the same batch in a table that references itself.
    """
    spec = table_spec(table)
    db.register(spec)
    plan = plan_for(db, spec)
    outcome = Outcome(plan.encode_key, memory_keys)
    per_batch = max(1, min(batch_rows, MAX_PARAMS[db.dialect] // max(1, len(spec.columns))))
    tries = Tries() if optimistic and _may_insert(conn, spec, check_parents) else None
    it = iter(rows)
    try:
        while chunk := list(islice(it, per_batch)):
            valid = validate_batch(spec, chunk) if validate else chunk
            for part in split_by_bytes(plan, encode_unique(plan, spec, valid), batch_bytes):
                literals = literal_rows(spec, plan, part) if plan.literals is not None else None
                if tries is not None and tries.due():
                    if _insert_part(db, conn, spec, plan, part, literals, outcome):
                        tries.succeeded()
                        continue
                    tries.failed()
                _upsert_part(db, conn, spec, plan, part, check_parents, outcome, literals)
    except BaseException:
        outcome.close()  # the spill file goes now, not when the traceback is collected
        raise
    return outcome.changeset(spec.qualname)


def _normalised(codecs: list[Codec], enc: tuple[Any, ...], raw: Sequence[Any]) -> tuple[Any, ...]:
    """A stored row in parameter space: equal to the encoded row ``enc`` when the values are."""
    # Most stored values come back exactly as they were written (text, ints, SQLite dates):
    # only the others pay for normalising (uuid bytes, JSON re-serialised, decimals, ...).
    return tuple(
        e if e == v else (None if v is None else c.stored(v))
        for c, e, v in zip(codecs, enc, raw, strict=True)
    )


def _upsert_part(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    plan: Plan,
    part: list[Encoded],
    check_parents: bool,
    outcome: Outcome,
    literals: list[str] | None,
) -> None:
    """Diff one part of a batch with the stored rows; write the new and changed rows only."""
    found = {int(r[0]): r for r in _diff(db, conn, spec, plan, part, literals, check_parents)}
    stored = _stored_rows(db, conn, spec, plan, [part[i][1] for i, r in found.items() if not r[1]])
    # Per returned row: its status relative to the stored row, and that row's digest.
    verdicts: dict[int, tuple[int, int]] = {}
    missing: list[int] = []
    for i in sorted(found):
        r = found[i]
        if r[1]:
            verdicts[i] = (INSERTED, 0)
        else:
            mine = plan.others(part[i][2])
            raw = stored.get(part[i][1])
            if raw is None:  # deleted by someone else since the diff: written again
                verdicts[i] = (UPDATED, 0)
                continue
            norm = _normalised(plan.other_codecs, mine, raw)
            if norm == mine:
                continue  # the same values, stored in another spelling
            verdicts[i] = (UPDATED, digest(norm))
        if any(r[2:]):
            missing.append(i)
    if missing:
        raise _missing_parent_error(db, spec, plan, part[missing[0]], found[missing[0]][2:])
    _record(plan, part, verdicts, outcome)
    if verdicts:
        chosen = sorted(verdicts)
        texts = [literals[i] for i in chosen] if literals is not None else None
        _write(db, conn, spec, [part[i] for i in chosen], texts)


def _may_insert(conn: sa.Connection, spec: TableSpec, check_parents: bool) -> bool:
    """Whether a refused plain INSERT is as good a check as the diff, for this table."""
    if not check_parents or not spec.foreign_keys:
        return True
    if any(fk.parent == spec.qualname for fk in spec.foreign_keys):
        return False  # the diff refuses a child whose parent comes in the same batch
    from limsync.pipeline.insert import enforces_foreign_keys  # it builds on this module

    return enforces_foreign_keys(conn)


def _insert_part(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    plan: Plan,
    part: list[Encoded],
    literals: list[str] | None,
    outcome: Outcome,
) -> bool:
    """One part as a plain INSERT in a savepoint: True when the database took every row (all
    new, then), False with nothing written when it refused the statement."""
    try:
        with conn.begin_nested():
            send_insert(db, conn, spec, part, literals)
    except (sa.exc.IntegrityError, sa.exc.DataError):
        return False  # a stored key, a missing parent, a bad value: the diff says which
    # A key of an earlier batch of this call is stored by now, so the INSERT would have been
    # refused: every key is new to the call as well.
    _record(plan, part, dict.fromkeys(range(len(part)), (INSERTED, 0)), outcome)
    return True


def _stored_rows(
    db: Database, conn: sa.Connection, spec: TableSpec, plan: Plan, ekeys: list[Key]
) -> dict[Key, tuple[Any, ...]]:
    """The stored non-key values of the rows the diff found different, by encoded key."""
    if not ekeys:
        return {}
    keys = spec.primary_key
    others = [c for c in spec.column_names if c not in keys]
    n = len(keys)
    out: dict[Key, tuple[Any, ...]] = {}
    for r in select_by_keys(db, conn, spec, (*keys, *others), keys, ekeys):
        ekey = tuple(c.stored(v) for c, v in zip(plan.key_codecs, r[:n], strict=True))
        out[ekey] = tuple(r[n:])
    return out


def _record(
    plan: Plan, part: list[Encoded], verdicts: dict[int, tuple[int, int]], outcome: Outcome
) -> None:
    """Add the part's keys to the call's outcome (see :class:`changes.Outcome`)."""
    positions, hashes = outcome.earlier([ekey for _, ekey, _ in part])
    fresh = [i for i, pos in enumerate(positions) if pos < 0]
    for i, pos in enumerate(positions):
        if pos < 0:
            continue
        status, before = verdicts.get(i, (UNCHANGED, 0))
        was = outcome.status(pos)
        if was == UNCHANGED and status != UNCHANGED:
            # Stored unchanged until now, so the stored row was the one from before the call.
            outcome.set(pos, UPDATED, before)
        elif was == UPDATED:
            restored = digest(plan.others(part[i][2])) == outcome.before(pos)
            outcome.set(pos, UNCHANGED if restored else UPDATED)
    if len(fresh) == len(part):
        statuses = bytes(verdicts.get(i, (UNCHANGED, 0))[0] for i in range(len(part)))
        befores = [verdicts.get(i, (UNCHANGED, 0))[1] for i in range(len(part))]
        outcome.add([k for k, _, _ in part], statuses, befores, hashes)
    else:
        outcome.add(
            [part[i][0] for i in fresh],
            bytes(verdicts.get(i, (UNCHANGED, 0))[0] for i in fresh),
            [verdicts.get(i, (UNCHANGED, 0))[1] for i in fresh],
            hashes[fresh],
        )


def _diff(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    plan: Plan,
    part: list[Encoded],
    literals: list[str] | None,
    check_parents: bool,
) -> Sequence[Any]:
    """The part's rows that are new or differ: (index, new, missing parent per foreign key)."""
    check = check_parents and bool(spec.foreign_keys)
    rows = [enc for _, _, enc in part]
    try:
        if literals is not None:
            row = values_row(db.engine.dialect)
            values = ", ".join(f"{row}{i}, {text})" for i, text in enumerate(literals))
            sql = diff_sql(db, spec, 0, check) + values + diff_tail(db, spec, check)
            count, text = conn.exec_driver_sql(no_params(sql)).one()
            found = [tuple(map(int, item.split(","))) for item in (text or "").split()]
            if len(found) != count:
                raise RuntimeError(
                    f"upsert diff of {spec.qualname}: {count} rows, {len(found)} read"
                )
            return found
        sql = diff_sql(db, spec, len(rows), check)
        result = conn.exec_driver_sql(sql, params(db, rows)).fetchall()
    except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
        raise row_error_from_db(db, spec, exc, [k for k, _, _ in part]) from None
    if db.dialect == "postgresql":  # WITH ORDINALITY counts from 1
        return [(r[0] - 1, *r[1:]) for r in result]
    return result


def _write(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    rows: list[Encoded],
    texts: list[str] | None,
) -> None:
    keys = [k for k, _, _ in rows]
    try:
        if texts is not None:
            values = ", ".join(f"({text})" for text in texts)
            sql = write_sql(db, spec, 0) + values + write_tail(db, spec)
            conn.exec_driver_sql(no_params(sql))
        else:
            encoded = [enc for _, _, enc in rows]
            conn.exec_driver_sql(write_sql(db, spec, len(rows)), params(db, encoded))
    except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
        # Only data problems become RowErrors; lost connections, deadlocks and the like
        # propagate as they are (the transaction turns them into DatabaseError).
        raise row_error_from_db(db, spec, exc, keys) from None


def _missing_parent_error(
    db: Database, spec: TableSpec, plan: Plan, row: Encoded, flags: Sequence[Any]
) -> MissingParentError:
    key, _, enc = row
    fk = next(fk for fk, flag in zip(spec.foreign_keys, flags, strict=True) if flag)
    ref = ", ".join(
        f"{c}={plan.codecs[spec.column_names.index(c)].decode(enc[spec.column_names.index(c)])!r}"
        for c in fk.columns
    )
    return MissingParentError(
        spec.qualname,
        spec.key_dict(key),
        ", ".join(fk.columns),
        f"references {fk.parent} ({ref}), which does not exist",
    )


def missing_parents(
    db: Database,
    conn: sa.Connection,
    table: type[Table] | TableSpec,
    rows: Sequence[Mapping[str, Any]],
    *,
    encoded: bool = False,
    cache: dict[str, set[Key]] | None = None,
) -> list[tuple[int, MissingParentError]]:
    """Rows whose referenced parent rows do not exist: one query per foreign key and batch.

    ``rows`` are validated rows, or parameter-encoded ones with ``encoded=True``. ``cache``
    (parent table -> encoded keys known to exist) saves asking again for parents an earlier,
    committed batch found; the caller must only pass it for parent tables that nothing
    uncommitted writes, and drop it when it deletes rows.
    """
    spec = table_spec(table)
    problems: dict[int, MissingParentError] = {}
    for fk in spec.foreign_keys:
        parent = db.spec(fk.parent)
        idx = [spec.column_names.index(c) for c in fk.columns]
        codecs = [db.codecs(spec)[i] for i in idx]
        wanted: dict[Key, list[int]] = {}
        for i, row in enumerate(rows):
            vals = tuple(row[c] for c in fk.columns)
            if any(v is None for v in vals):
                continue  # a nullable reference left empty
            if not encoded:
                vals = tuple(c.encode(v) for c, v in zip(codecs, vals, strict=True))
            wanted.setdefault(vals, []).append(i)
        if not wanted:
            continue
        known = cache.setdefault(fk.parent, set()) if cache is not None else set()
        ask = [k for k in wanted if k not in known]
        found = existing_keys(db, conn, parent, fk.parent_columns, ask) if ask else set()
        if cache is not None:
            known.update(k for k in ask if k in found)
        for vals, indexes in wanted.items():
            if vals in found or vals in known:
                continue
            for i in indexes:
                key = _readable(db, spec, rows[i], spec.primary_key, encoded)
                ref = ", ".join(
                    f"{c}={v!r}"
                    for c, v in _readable(db, spec, rows[i], fk.columns, encoded).items()
                )
                problems.setdefault(
                    i,
                    MissingParentError(
                        spec.qualname,
                        key,
                        ", ".join(fk.columns),
                        f"references {fk.parent} ({ref}), which does not exist",
                    ),
                )
    return sorted(problems.items())


def _readable(
    db: Database, spec: TableSpec, row: Mapping[str, Any], columns: Sequence[str], encoded: bool
) -> dict[str, Any]:
    """Some columns of a row as Python values, for messages (uuid as UUID, not 16 bytes)."""
    if not encoded:
        return {c: row[c] for c in columns}
    codecs = db.codecs(spec)
    return {c: codecs[spec.column_names.index(c)].decode(row[c]) for c in columns}


def select_by_keys(
    db: Database,
    conn: sa.Connection,
    spec: TableSpec,
    select: Sequence[str],
    match: Sequence[str],
    keys: Sequence[Key],
) -> Iterator[Any]:
    """Rows (``select`` columns, as the driver returns them) whose ``match`` columns equal one
    of ``keys`` (encoded values): one statement per chunk, in the form each dialect answers
    from an index (an ``IN`` list, typed arrays on PostgreSQL, a joined VALUES list on SQLite).
    """
    step = max(1, MAX_PARAMS[db.dialect] // max(1, len(match)))
    for start in range(0, len(keys), step):
        part = keys[start : start + step]
        sql = in_sql(db, spec, tuple(select), tuple(match), len(part))
        yield from conn.exec_driver_sql(sql, params(db, part))


def existing_keys(
    db: Database, conn: sa.Connection, spec: TableSpec, columns: Sequence[str], keys: list[Key]
) -> set[Key]:
    """Which of ``keys`` (encoded values of ``columns``) some stored row has, as stored."""
    codecs = [db.codecs(spec)[spec.column_names.index(c)] for c in columns]
    return {
        tuple(c.stored(v) for c, v in zip(codecs, r, strict=True))
        for r in select_by_keys(db, conn, spec, columns, columns, keys)
    }
