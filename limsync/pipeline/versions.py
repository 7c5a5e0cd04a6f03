"""Per-record source versions: the cursor value of the record version the ledger stores.

A stream with a cursor field (Alyx sessions: ``auto_datetime``) can tell from a record's
version alone whether the stored copy is current. The engine keeps, per record, the version of
the record it last stored (written or found unchanged);
a connector asks which versions are held (:attr:`~limsync.connectors.ReadContext.versions`) and
skips the records whose version it already holds. A missing (or older) version only costs a
re-read, so the table is never required to be complete; it must never hold the *current*
version of a record the database does not store, which is why the engine writes versions only
after a stream's last batch (the connector may take some back first:
``ReadContext.unhold``) and drops them when a record is forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from limsync.pipeline.state import StateTables

CHUNK = 1000


def held_since(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, lower: str
) -> set[str]:
    """The distinct versions held for a stream's records that sort at or after ``lower``.

    Versions compare as text, so ``lower`` must be a bound in the same text form (ISO 8601
    datetimes: a date prefix is a safe lower bound).
    """
    t = st.source_version
    query = (
        sa.select(t.c.version)
        .where(t.c.connector == connector, t.c.stream == stream, t.c.version >= lower)
        .distinct()
    )
    return {str(v) for v in conn.execute(query).scalars()}


def hold(
    conn: sa.Connection,
    st: StateTables,
    connector: str,
    stream: str,
    versions: Sequence[tuple[str, str]],
) -> None:
    """Record ``(key text, version)`` pairs for keys that hold none (:func:`drop` them first)."""
    if not versions:
        return
    t = st.source_version
    conn.execute(
        t.insert(),
        [{"connector": connector, "stream": stream, "source_key": k, "version": v}
         for k, v in versions],
    )  # fmt: skip


def drop(
    conn: sa.Connection, st: StateTables, connector: str, stream: str, keys: Sequence[str]
) -> None:
    """Forget the versions held for these keys (a forgotten record holds none)."""
    t = st.source_version
    for start in range(0, len(keys), CHUNK):
        part = keys[start : start + CHUNK]
        conn.execute(
            t.delete().where(
                t.c.connector == connector, t.c.stream == stream, t.c.source_key.in_(part)
            )
        )
