"""Operations on limsync's bookkeeping: ledger entries, cursors, outbox and quarantine.

Every function takes the caller's connection, so a batch's rows, ledger entries, cursor and
outbox commit in one transaction (see :mod:`limsync.pipeline.state` for the tables).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from json.encoder import encode_basestring_ascii
from typing import Any

import sqlalchemy as sa

from limsync.pipeline.literals import literal
from limsync.pipeline.state import StateTables, utcnow
from limsync.pipeline.upsert_sql import values_row

CHUNK = 1000


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]


def _marker(conn: sa.Connection) -> str:
    return "?" if conn.dialect.name == "sqlite" else "%s"


def _name(conn: sa.Connection, table: sa.Table) -> str:
    return str(conn.dialect.identifier_preparer.format_table(table))


def _timestamp(conn: sa.Connection) -> Any:
    """Now, as the driver takes it: SQLAlchemy's SQLite DATETIME text, else a datetime."""
    now = utcnow()
    return now.strftime("%Y-%m-%d %H:%M:%S.%f") if conn.dialect.name == "sqlite" else now


# Values written into SQL text as literals: identifiers, qualified table names, timestamps.
_SAFE_LITERAL = re.compile(r"[\w.#:+~ -]*", re.ASCII)


def _literal(value: Any) -> str | None:
    """``value`` as a SQL literal when it is plainly safe to inline, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, dt.datetime):
        value = value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, str) and _SAFE_LITERAL.fullmatch(value):
        return f"'{value}'"
    return None


def _insert_many(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: list[tuple[Any, ...]],
    constants: Mapping[str, Any],
) -> None:
    """One executemany of plain tuples (values in the order of ``columns``), plus ``constants``
    (the same for every row) written once into the statement.

    The ledger and the outbox get a row per record of every batch: SQLAlchemy's per-row
    parameter processing would cost more than the insert itself, and so would escaping the
    same run id, stream and timestamp again for every row (PyMySQL does that in Python).
    """
    p = _marker(conn)
    quote = conn.dialect.identifier_preparer.quote  # "change" is a reserved word in MySQL
    names = list(columns)
    values = [p] * len(columns)
    extra: list[Any] = []
    for name, value in constants.items():
        names.append(name)
        literal = _literal(value)
        values.append(literal if literal is not None else p)
        if literal is None:
            extra.append(value)
    into = f"INSERT INTO {_name(conn, table)} ({', '.join(quote(c) for c in names)}) "
    head = f"{into}VALUES "
    template = f"({', '.join(values)})"
    params = [(*row, *extra) for row in rows] if extra else rows
    if conn.dialect.name != "mysql":
        conn.exec_driver_sql(head + template, params)
        return
    if not extra:
        # The rows as a VALUES table of their own columns, the constants added by a SELECT:
        # MariaDB parses and converts each literal of a multi-row INSERT, so a ledger row
        # costs it ~3 us less this way (8 against 11 us), an outbox row ~2 us (4 against 6).
        cols = [f"v{i}" for i in range(len(columns))]
        with_head = f"{into}WITH v({', '.join(cols)}) AS (VALUES "
        consts = ", ".join(v for v in values if v != p)
        tail = f") SELECT {', '.join(cols)}{', ' if consts else ''}{consts} FROM v"  # noqa: S608
        if _insert_literal_rows(conn, with_head, tail, rows):
            return
    # PyMySQL rewrites executemany into one multi-row INSERT only when the VALUES clause holds
    # nothing but placeholders; with literals in it, it would send one statement per row.
    for part in _packets(params):
        conn.exec_driver_sql(head + ", ".join([template] * len(part)), tuple(chain(*part)))


# PyMySQL's server_status flag for sql_mode NO_BACKSLASH_ESCAPES (the MySQL protocol's
# SERVER_STATUS_NO_BACKSLASH_ESCAPES), written here so that SQLite-only runs need not import
# PyMySQL's connection machinery.
_NO_BACKSLASH_ESCAPES = 512


def _mysql_text(value: str) -> str:
    """``value`` as the inside of a single-quoted MySQL literal (backslash escapes on).

    MySQL needs only the backslash and the quote escaped; NUL is escaped too, as the C API
    does. Three ``str.replace`` (C loops that return at once when there is nothing to do) cost
    a tenth of PyMySQL's ``str.translate`` through a dict table, which looks every character
    up in Python objects (~2 us against ~25 us for a 40-character key text on this machine).
    """
    return value.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0")


def _backslash_escapes(conn: sa.Connection, charset: str) -> bool:
    """Whether :func:`_mysql_text` gives exact literals on this MySQL connection: the server
    reads backslash escapes (no NO_BACKSLASH_ESCAPES) and the connection's character set
    starts with ``charset``."""
    dbapi = conn.connection.dbapi_connection
    status = getattr(dbapi, "server_status", None)
    if not isinstance(status, int) or status & _NO_BACKSLASH_ESCAPES:
        return False
    # In UTF-8 no character's bytes contain a backslash or a quote (unlike GBK or SJIS).
    return str(getattr(dbapi, "charset", "")).startswith(charset)


def _mysql_texts(values: Sequence[str]) -> list[str]:
    """:func:`_mysql_text` of many values: one escape of their join, split again (three C loops
    over the batch instead of three calls per value), unless a value holds the separator."""
    joined = "\x01".join(values)
    if joined.count("\x01") != len(values) - 1:
        return [_mysql_text(v) for v in values]
    return _mysql_text(joined).split("\x01")


def _insert_literal_rows(
    conn: sa.Connection, head: str, tail: str, rows: list[tuple[Any, ...]]
) -> bool:
    """MySQL: the rows as literal rows of a ``VALUES`` table between ``head`` and ``tail``, one
    statement per packet, escaped here; False (nothing sent) when a value is not a str, the
    server quotes without backslash escapes or the connection's character set is not UTF-8.

    Ledger and outbox values are all text (key texts, hashes, JSON targets). PyMySQL's
    per-value ``escape`` (type dispatch, encoder lookup, quoting: several Python calls) was a
    third of these inserts' client time; :func:`_mysql_text` gives an equivalent literal.
    """
    if not _backslash_escapes(conn, "utf8") or not all(type(v) is str for row in rows for v in row):
        return False
    start_row = values_row(conn.dialect) + "'"
    # Key texts, hashes and targets seldom hold a quote or a backslash: one scan of the whole
    # batch (C loops over one string) usually spares escaping every value on its own.
    text = "".join(chain.from_iterable(rows))
    if "\\" in text or "'" in text or "\0" in text:
        esc = _mysql_text
        lines = [start_row + "','".join([esc(v) for v in row]) + "')" for row in rows]
    else:
        lines = [start_row + "','".join(row) + "')" for row in rows]
    start, size = 0, 0
    for i, line in enumerate(lines):
        if i > start and size + len(line) > _PACKET_CHARS:
            _execute_literal(conn, head + ",".join(lines[start:i]) + tail)
            start, size = i, 0
        size += len(line) + 1
    _execute_literal(conn, head + ",".join(lines[start:]) + tail)
    return True


# Characters of one literal statement: at most 12 MB as UTF-8 even if every character took 4
# bytes, below MySQL's default max_allowed_packet of 16 MB (key texts are ASCII: ~3 MB).
_PACKET_CHARS = 3_000_000


def _execute_literal(conn: sa.Connection, sql: str) -> None:
    # no_parameters: the driver must not %-format a statement that carries no parameters.
    conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


def _packets(rows: list[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    """Rows in groups whose statement stays far below MySQL's max_allowed_packet."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        n = sum(2 * len(v) + 8 if isinstance(v, str) else 24 for v in row)
        if i > start and (size + n > 4_000_000 or i - start >= 2000):
            yield rows[start:i]
            start, size = i, 0
        size += n
    if start < len(rows):
        yield rows[start:]


def _delete_keys(
    conn: sa.Connection, table: sa.Table, connector: str, stream: str, keys: Sequence[str]
) -> None:
    """Delete a stream's rows of a bookkeeping table by source key, 1,000 keys a statement."""
    for part in _chunks(keys):
        conn.execute(
            table.delete().where(
                table.c.connector == connector,
                table.c.stream == stream,
                table.c.source_key.in_(part),
            )
        )


# --- ledger entries


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger holds about one source record."""

    content_hash: str
    state: str
    targets_json: str | None  # None: not read (see lookup's ``targets``)

    @functools.cached_property
    def targets(self) -> list[tuple[str, list[Any]]]:
        """The (table, key) rows the record produced; decoded only when asked for, since an
        unchanged re-sync looks up every record but needs the targets of changed ones only."""
        if self.targets_json is None:
            raise ValueError("ledger entry read without its targets (lookup(targets=True))")
        return [(n, list(v)) for n, v in json.loads(self.targets_json)]


_JSON_NATIVE = (str, int, float, list, tuple, dict)


def _key_part(v: Any) -> str:
    t = type(v)
    if t is str:
        return encode_basestring_ascii(v)
    if t is int:
        return int.__repr__(v)
    if t is uuid.UUID:
        return f'"{v}"'  # hex digits and dashes: nothing to escape
    # str() of a datetime is its isoformat(" "), of a date its isoformat(), called directly at
    # half the cost of formatting (a datetime key part in every weighing, session, ...). Digits,
    # dashes, colons, a space, a dot, a plus: nothing to escape.
    if t is dt.datetime:
        return '"' + dt.datetime.isoformat(v, " ") + '"'
    if t is dt.date:
        return '"' + dt.date.isoformat(v) + '"'
    if v is None or isinstance(v, _JSON_NATIVE):
        return json.dumps(v, separators=(",", ":"), default=str)
    return encode_basestring_ascii(str(v))  # what default=str does: dates, decimals, ...


def key_text(key: Sequence[Any]) -> str:
    """A source key as the ledger stores it: canonical JSON of the key tuple.

    Byte for byte ``json.dumps(list(key), separators=(",", ":"), default=str)``, built from its
    parts because every record of every sync needs one: strings and ints, the usual key
    parts, skip the general encoder.
    """
    if len(key) == 1:  # most keys: no list and no join
        return "[" + _key_part(key[0]) + "]"
    return "[" + ",".join([_key_part(v) for v in key]) + "]"


def key_texts(keys: Iterable[Sequence[Any]]) -> list[str]:
    """:func:`key_text` of many keys (one call for a batch of records)."""
    part = _key_part
    return [
        "[" + part(k[0]) + "]" if len(k) == 1 else "[" + ",".join([part(v) for v in k]) + "]"
        for k in keys
    ]


def targets_text(targets: Iterable[tuple[str, Sequence[Any]]]) -> str:
    """(table, key) pairs as the ledger stores them: ``[["schema.table",[key...]],...]``.

    The text of ``json.dumps`` with ``default=str``, built from :func:`key_text`.
    """
    return targets_text_of((table, key_text(key)) for table, key in targets)


def targets_text_of(targets: Iterable[tuple[str, str]]) -> str:
    """:func:`targets_text` of (table, :func:`key_text`) pairs, for a caller that has the key
    texts already (the writer builds each row's once, for the ledger and the outbox)."""
    head = _target_head
    if isinstance(targets, list) and len(targets) == 1:  # most records: one row, no join
        pair: tuple[str, str] = targets[0]
        return "[" + head(pair[0]) + pair[1] + "]]"
    return "[" + ",".join([head(table) + text + "]" for table, text in targets]) + "]"


@functools.lru_cache(maxsize=1024)
def _target_head(table: str) -> str:
    # A few tables, a row per record each: their JSON is built once.
    return f"[{encode_basestring_ascii(table)},"


def _select_sql(conn: sa.Connection, st: StateTables, columns: str, n: int) -> str:
    p = "?" if conn.dialect.name == "sqlite" else "%s"
    table = conn.dialect.identifier_preparer.format_table(st.ledger)
    return (
        f"SELECT {columns} FROM {table} WHERE connector = {p} AND stream = {p} "  # noqa: S608
        f"AND source_key IN ({', '.join([p] * n)})"
    )


def lookup(
    conn: sa.Connection,
    st: StateTables,
    connector: str,
    stream: str,
    keys: Sequence[str],
    *,
    targets: bool = True,
) -> dict[str, LedgerEntry]:
    """Ledger entries for ``keys`` (key texts), one query per 1,000 keys.

    With ``targets=False`` the entries carry hash and state only: enough to tell unchanged
    records, which are most of a re-sync, without reading what each one produced.
    """
    out: dict[str, LedgerEntry] = {}
    columns = "source_key, content_hash, state" + (", targets" if targets else "")
    for part in _chunks(keys):
        sql = _select_sql(conn, st, columns, len(part))
        # Plain driver rows: this runs for every record of every sync.
        for row in conn.exec_driver_sql(sql, (connector, stream, *part)).all():
            out[row[0]] = LedgerEntry(row[1], row[2], row[3] if targets else None)
    return out


def states(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, keys: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """``key -> (content_hash, state)`` for those of ``keys`` the ledger holds.

    Read through the driver's own cursor (plain tuples, no result objects), one query per
    1,000 keys, on the caller's connection (so a dry run sees its own writes). To tell
    unchanged records, :func:`mismatches` is cheaper: it returns only the keys that differ.
    """
    out: dict[str, tuple[str, str]] = {}
    cursor = conn.connection.cursor()
    try:
        for part in _chunks(keys):
            cursor.execute(
                _select_sql(conn, st, "source_key, content_hash, state", len(part)),
                (connector, stream, *part),
            )
            out.update({k: (h, s) for k, h, s in cursor.fetchall()})
    finally:
        cursor.close()
    return out


def mismatches(
    conn: sa.Connection,
    st: StateTables,
    connector: str,
    stream: str,
    hashes: Mapping[str, str],
) -> dict[str, tuple[str, str] | None]:
    """The keys of ``hashes`` (key text -> content hash) whose ledger entry is not ``present``
    with that hash: ``key -> (content_hash, state)`` as the ledger holds it, or ``None`` for a
    key it does not hold. Every key left out is held, ``present``, with the hash given.

    What tells an unchanged record, for every record of every sync: the database compares the
    hashes, so a batch of unchanged records (most of a re-sync) returns nothing, where
    :func:`states` would send back a row per record (which PyMySQL decodes in Python, ~7 us
    each). One query per 1,000 keys, on the caller's connection (so a dry run sees its own
    writes).
    """
    out: dict[str, tuple[str, str] | None] = {}
    if not hashes:
        return out
    pairs = list(hashes.items())
    cursor = conn.connection.cursor()
    try:
        for start in range(0, len(pairs), CHUNK):
            part = pairs[start : start + CHUNK]
            if conn.dialect.name == "mysql":
                cursor.execute(_mismatch_sql_mysql(conn, st, connector, stream, part))
                out.update(_mismatch_rows_mysql(cursor.fetchone(), part))
                continue
            sql, params = _mismatch_sql(conn, st, connector, stream, part)
            cursor.execute(sql, params)
            for k, h, s in cursor.fetchall():
                out[k] = None if s is None else (h, s)
    finally:
        cursor.close()
    return out


def _mismatch_sql(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, part: list[tuple[str, str]]
) -> tuple[str, tuple[Any, ...]]:
    """SQLite and PostgreSQL: the batch's (key, hash) pairs left-joined with the ledger by key,
    returning (key, stored hash, state) of the pairs that do not match, state NULL if absent."""
    table = _name(conn, st.ledger)
    where = "l.source_key IS NULL OR l.state <> 'present' OR"
    if conn.dialect.name == "postgresql":
        # Two binary array parameters however many keys (as the upsert's diff): parsing a
        # statement of 2,000 placeholders would cost more than the comparison. LATERAL with
        # LIMIT 1 (the key is unique) keeps the planner from flattening the lookup into a join
        # planned from statistics: a ledger loaded moments ago looks empty to it, and it would
        # hash the stream's whole ledger for every batch (~10x slower at 100,000 entries).
        sql = (
            "SELECT v.k, l.content_hash, l.state "  # noqa: S608 (quoted)
            "FROM unnest(CAST(%b AS TEXT[]), CAST(%b AS TEXT[])) AS v(k, h) "
            "LEFT JOIN LATERAL (SELECT l.source_key, l.content_hash, l.state "
            f"FROM {table} AS l WHERE l.connector = %s AND l.stream = %s "
            "AND l.source_key = v.k LIMIT 1) AS l ON true "
            f"WHERE {where} l.content_hash IS DISTINCT FROM v.h"
        )
        return sql, ([k for k, _ in part], [h for _, h in part], connector, stream)
    sql = (
        f"WITH v(k, h) AS (VALUES {', '.join(['(?, ?)'] * len(part))}) "  # noqa: S608 (quoted)
        f"SELECT v.k, l.content_hash, l.state FROM v LEFT JOIN {table} AS l "
        "ON l.connector = ? AND l.stream = ? AND l.source_key = v.k "
        f"WHERE {where} l.content_hash IS NOT v.h"
    )
    return sql, (*chain.from_iterable(part), connector, stream)


# group_concat_max_len for the MySQL comparison's one-row answer: 1,000 keys' items take
# ~90 KB at most, above MySQL's default of 1,024 bytes.
_CONCAT_MAX = 1 << 20


def _mismatch_sql_mysql(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, part: list[tuple[str, str]]
) -> str:
    """MySQL: the pairs as a literal ``VALUES`` table (PyMySQL would escape each parameter in
    Python) left-joined with the ledger, answering one row: how many pairs do not match and
    ``i[,hex(hash),hex(state)]`` of each (only ``i`` when absent), as the upsert's diff does.
    """
    if _backslash_escapes(conn, "utf8mb4"):
        keys = _mysql_texts([k for k, _ in part])
        hashes = _mysql_texts([h for _, h in part])
        rows = [f"{i},'{k}','{h}'" for i, k, h in zip(range(len(part)), keys, hashes, strict=True)]
        c, s = f"'{_mysql_text(connector)}'", f"'{_mysql_text(stream)}'"
    else:
        # Hex literals (_utf8mb4 x'...') mean the same text whatever the sql_mode and the
        # connection's character set.
        text = literal
        rows = [f"{i},{text(k)},{text(h)}" for i, (k, h) in enumerate(part)]
        c, s = text(connector), text(stream)
    mariadb = bool(getattr(conn.dialect, "is_mariadb", False))
    row = values_row(conn.dialect)
    values = row + f"), {row}".join(rows) + ")"
    limit = f"SET STATEMENT group_concat_max_len = {_CONCAT_MAX} FOR " if mariadb else ""
    hint = "" if mariadb else f"/*+ SET_VAR(group_concat_max_len = {_CONCAT_MAX}) */ "
    # Compared as bytes: the ledger's utf8mb4_bin collation pads with spaces (and a ledger
    # created in another schema's collation may ignore case), so "k " would match "k". The
    # plain equality before it is what the primary key's index serves. Hash and state travel
    # in hex, so that no stored text can be taken for a separator.
    return (
        f"{limit}WITH v(i, k, h) AS (VALUES {values}) "  # noqa: S608 (escaped above)
        f"SELECT {hint}COUNT(*), GROUP_CONCAT(CONCAT_WS(',', v.i, HEX(l.content_hash), "
        f"HEX(l.state)) SEPARATOR ' ') FROM v LEFT JOIN {_name(conn, st.ledger)} AS l "
        f"ON l.connector = {c} AND l.stream = {s} AND l.source_key = v.k "
        "AND CAST(l.source_key AS BINARY) = CAST(v.k AS BINARY) "
        "WHERE l.source_key IS NULL OR CAST(l.state AS BINARY) <> 'present' "
        "OR CAST(l.content_hash AS BINARY) <> CAST(v.h AS BINARY)"
    )


def _mismatch_rows_mysql(
    answer: tuple[Any, ...] | None, part: list[tuple[str, str]]
) -> Iterator[tuple[str, tuple[str, str] | None]]:
    count, text = answer if answer is not None else (0, None)
    items = text.split(" ") if text else []
    # GROUP_CONCAT cuts its answer at group_concat_max_len (with a warning only).
    if len(items) != count:
        raise RuntimeError(f"ledger comparison: {count} keys differ, {len(items)} read")
    for item in items:
        i, *stored = item.split(",")
        key = part[int(i)][0]
        if not stored:
            yield key, None
        else:
            h, s = stored
            yield key, (bytes.fromhex(h).decode(), bytes.fromhex(s).decode())


def count(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, state: str | None = None
) -> int:
    """How many entries the ledger holds for a stream (in ``state``, or in any)."""
    t = st.ledger
    query = (
        sa.select(sa.func.count())
        .select_from(t)
        .where(t.c.connector == connector, t.c.stream == stream)
    )
    if state is not None:
        query = query.where(t.c.state == state)
    return int(conn.execute(query).scalar_one())


def record(
    conn: sa.Connection,
    st: StateTables,
    connector: str,
    stream: str,
    entries: Iterable[tuple[str, str, str | Sequence[tuple[str, Sequence[Any]]]]],
    run_id: int,
    existing: set[str],
) -> None:
    """Write (key, hash, targets) entries as present; ``existing`` keys are updated in place.

    ``targets`` are the (table, primary-key tuple) rows the record produced, or their
    :func:`targets_text` already built.
    """
    now = _timestamp(conn)
    new: list[tuple[Any, ...]] = []
    changed: list[tuple[Any, ...]] = []
    for key, h, targets in entries:
        text = targets if isinstance(targets, str) else targets_text(targets)
        if key in existing:
            changed.append((h, text, now, run_id, connector, stream, key))
        else:
            new.append((key, h, text))
    if new:
        constants = {
            "connector": connector, "stream": stream, "state": "present", "first_seen": now,
            "last_changed": now, "run_id": run_id,
        }  # fmt: skip
        _insert_many(conn, st.ledger, ("source_key", "content_hash", "targets"), new, constants)
    if changed:
        p = _marker(conn)
        q = conn.dialect.identifier_preparer.quote
        sets = ", ".join(
            f"{q(c)} = {p}" for c in ("content_hash", "targets", "last_changed", "run_id")
        )
        where = " AND ".join(f"{q(c)} = {p}" for c in ("connector", "stream", "source_key"))
        sql = (
            f"UPDATE {_name(conn, st.ledger)} SET {q('state')} = 'present', {sets} "  # noqa: S608
            f"WHERE {where}"
        )
        conn.exec_driver_sql(sql, changed)


def known_keys(
    conn: sa.Connection, st: StateTables, connector: str, stream: str
) -> Iterator[tuple[str, str]]:
    """Every (key, state) the ledger holds for a stream, streamed in chunks of 5,000."""
    p = "?" if conn.dialect.name == "sqlite" else "%s"
    table = conn.dialect.identifier_preparer.format_table(st.ledger)
    sql = f"SELECT source_key, state FROM {table} WHERE connector = {p} AND stream = {p}"  # noqa: S608
    # stream_results: PyMySQL would otherwise buffer the whole result (every key) client-side.
    result = conn.exec_driver_sql(
        sql, (connector, stream), execution_options={"stream_results": True}
    )
    while rows := result.fetchmany(5000):
        yield from ((str(k), str(state)) for k, state in rows)


def mark(
    conn: sa.Connection,
    st: StateTables,
    connector: str,
    stream: str,
    keys: Sequence[str],
    state: str,
    run_id: int,
) -> None:
    """Set the state (``gone`` or ``present``) of ledger entries."""
    t = st.ledger
    for part in _chunks(keys):
        conn.execute(
            t.update()
            .where(t.c.connector == connector, t.c.stream == stream, t.c.source_key.in_(part))
            .values(state=state, last_changed=utcnow(), run_id=run_id)
        )


def forget(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, keys: Sequence[str]
) -> None:
    """Remove ledger entries (after their rows were deleted)."""
    _delete_keys(conn, st.ledger, connector, stream, keys)


# --- cursors


def get_cursor(conn: sa.Connection, st: StateTables, connector: str, stream: str) -> str | None:
    """The committed cursor of a stream, or None."""
    t = st.cursor
    return conn.execute(
        sa.select(t.c.value).where(t.c.connector == connector, t.c.stream == stream)
    ).scalar()


def set_cursor(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, value: str
) -> None:
    """Store a stream's cursor (inside the batch's transaction)."""
    t = st.cursor
    updated = conn.execute(
        t.update()
        .where(t.c.connector == connector, t.c.stream == stream)
        .values(value=value, updated_at=utcnow())
    ).rowcount
    if not updated:
        conn.execute(
            t.insert().values(connector=connector, stream=stream, value=value, updated_at=utcnow())
        )


# --- outbox


def emit(
    conn: sa.Connection,
    st: StateTables,
    table: str,
    keys: Iterable[Sequence[Any]],
    change: str,
    run_id: int,
) -> int:
    """Queue changed keys of a table for downstream recompute; returns how many."""
    return emit_texts(conn, st, table, [key_text(k) for k in keys], change, run_id)


def emit_texts(
    conn: sa.Connection,
    st: StateTables,
    table: str,
    texts: Sequence[str],
    change: str,
    run_id: int,
) -> int:
    """:func:`emit` of keys given as their :func:`key_text`; returns how many."""
    rows = [(t,) for t in texts]
    if rows:
        constants = {
            "table_name": table, "change": change, "run_id": run_id,
            "created_at": _timestamp(conn),
        }  # fmt: skip
        _insert_many(conn, st.outbox, ("row_key",), rows, constants)
    return len(rows)


# --- quarantine


def quarantine(
    conn: sa.Connection,
    st: StateTables,
    connector: str,
    stream: str,
    items: Sequence[tuple[str, str, str, Any]],
    run_id: int,
) -> None:
    """Store (key, stage, error, raw record) items, replacing earlier entries of the same keys."""
    if not items:
        return
    t = st.quarantine
    _delete_keys(conn, t, connector, stream, [k for k, *_ in items])
    now = utcnow()
    rows = {
        k: {
            "connector": connector, "stream": stream, "source_key": k, "stage": stage,
            "error": error, "raw": json.dumps(raw, default=str), "run_id": run_id,
            "created_at": now,
        }
        for k, stage, error, raw in items
    }  # fmt: skip
    conn.execute(t.insert(), list(rows.values()))


def has_quarantine(conn: sa.Connection, st: StateTables, connector: str, stream: str) -> bool:
    """Whether a stream has any quarantined records."""
    q = st.quarantine
    query = (
        sa.select(sa.literal(1)).where(q.c.connector == connector, q.c.stream == stream).limit(1)
    )
    return conn.execute(query).first() is not None


def release_quarantine(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, keys: Sequence[str]
) -> None:
    """Drop quarantine entries of records that have now landed."""
    _delete_keys(conn, st.quarantine, connector, stream, keys)
