"""The ledger's key text: the one canonical form of a source key, byte for byte stable."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from limsync.pipeline import ledger, state
from limsync.pipeline.database import Database
from limsync.pipeline.ledger import key_text, targets_text


class Colour(enum.StrEnum):
    RED = "red"


def reference(key: tuple[Any, ...]) -> str:
    """The definition: what every ledger written so far holds."""
    return json.dumps(list(key), separators=(",", ":"), default=str)


parts = st.one_of(
    st.text(),
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.uuids(),
    st.datetimes(),
    st.dates(),
    st.decimals(allow_nan=False, allow_infinity=False),
)


@given(st.lists(parts, min_size=1, max_size=3))
def test_key_text_is_canonical_json(key: list[Any]) -> None:
    assert key_text(tuple(key)) == reference(tuple(key))


def test_key_text_of_unusual_parts() -> None:
    for key in [
        ('é"\\\n\u2028',),
        (Colour.RED, 2**70),
        (uuid.UUID(int=5), dt.datetime(2026, 1, 2, 3, 4, 5, 6), decimal.Decimal("1.50")),
    ]:
        assert key_text(key) == reference(key)


@given(st.lists(st.tuples(st.text(), st.lists(parts, min_size=1, max_size=3)), max_size=3))
def test_targets_text_is_the_json_of_the_pairs(pairs: list[tuple[str, list[Any]]]) -> None:
    as_json = [(table, json.loads(reference(tuple(key)))) for table, key in pairs]
    expected = json.dumps(as_json, separators=(",", ":"), default=str)
    assert targets_text(pairs) == expected
    assert json.loads(targets_text(pairs)) == json.loads(expected)


def test_constants_that_are_not_plain_names_travel_as_parameters(db: Database) -> None:
    """Per-batch constants are inlined only when plainly safe; anything else is a parameter."""
    st = state.ensure(db)
    odd = "o'brien\\; DROP TABLE x"
    with db.transaction() as conn:
        assert ledger.emit(conn, st, odd, [("a",), (uuid.UUID(int=1),)], "update", 7) == 2
        ledger.record(conn, st, odd, "s", [('["k"]', "h" * 32, [("t.x", (1,))])], 7, set())
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(st.outbox.c.table_name, st.outbox.c.row_key)).all()
        entries = ledger.lookup(conn, st, odd, "s", ['["k"]'])
    assert sorted(rows) == [(odd, '["00000000-0000-0000-0000-000000000001"]'), (odd, '["a"]')]
    assert entries['["k"]'].targets == [("t.x", [1])]


@given(st.lists(st.lists(parts, min_size=1, max_size=3), max_size=5))
def test_key_texts_of_a_batch(keys: list[list[Any]]) -> None:
    assert ledger.key_texts([tuple(k) for k in keys]) == [reference(tuple(k)) for k in keys]


def test_states_and_count(db: Database) -> None:
    """What the unchanged check reads: hash and state of the keys held, for one stream only."""
    st = state.ensure(db)
    keys = [f'["k{i}"]' for i in range(2500)]  # three chunks of 1,000
    with db.transaction() as conn:
        entries = [(k, f"{i:032x}", [("t.x", (i,))]) for i, k in enumerate(keys)]
        ledger.record(conn, st, "c", "s", entries, 1, set())
        ledger.record(conn, st, "c", "other", [(keys[0], "f" * 32, [])], 1, set())
        ledger.mark(conn, st, "c", "s", keys[:2], "gone", 2)
    with db.engine.connect() as conn:
        found = ledger.states(conn, st, "c", "s", [*keys[::-1], '["missing"]'])
        assert ledger.count(conn, st, "c", "s") == 2500
        assert ledger.count(conn, st, "c", "other") == 1
        assert ledger.count(conn, st, "c", "none") == 0
    assert len(found) == 2500
    assert found[keys[0]] == (f"{0:032x}", "gone")
    assert found[keys[2499]] == (f"{2499:032x}", "present")


# Every character a SQL literal must escape (quotes, backslashes, NUL, Ctrl-Z, line ends), a
# driver's parameter marker and text beyond ASCII.
AWKWARD = ["o'b\"r\\i\0e\032n\r\n", "100% %s %%", "é 中 \u2028", "'", "\\", ""]


def awkward(backend: str) -> list[str]:
    """AWKWARD as the backend can store it: PostgreSQL text holds no NUL."""
    return [k.replace("\0", "") for k in AWKWARD] if backend == "postgres" else AWKWARD


def _entries_and_outbox(
    db: Database, keys: list[str]
) -> tuple[dict[str, ledger.LedgerEntry], list[Any]]:
    st = state.ensure(db)
    with db.transaction() as conn:
        ledger.record(
            conn, st, "c", "s", [(k, f"{i:032x}", [(k, (k, i))]) for i, k in enumerate(keys)],
            7, set(),
        )  # fmt: skip
        ledger.emit(conn, st, "t.x", [(k,) for k in keys], "insert", 7)
    with db.engine.connect() as conn:
        entries = ledger.lookup(conn, st, "c", "s", keys)
        rows = conn.execute(sa.select(st.outbox.c.row_key).order_by(st.outbox.c.id)).all()
    return entries, [r[0] for r in rows]


def test_ledger_and_outbox_keep_every_character(db: Database, backend: str) -> None:
    """Entries and outbox rows come back exactly as written, whatever their text holds."""
    keys = awkward(backend)
    entries, outbox = _entries_and_outbox(db, keys)
    assert sorted(entries) == sorted(keys)
    for i, k in enumerate(keys):
        assert entries[k].content_hash == f"{i:032x}"
        assert entries[k].targets == [(k, [k, i])]
    assert outbox == [key_text((k,)) for k in keys]


def test_ledger_without_backslash_escapes(db: Database, backend: str) -> None:
    """A MySQL server in NO_BACKSLASH_ESCAPES mode reads backslashes literally: the ledger's
    own escaping must not apply there (the driver's quoting does)."""
    if backend != "mysql":
        pytest.skip("a MySQL sql_mode")

    @sa.event.listens_for(db.engine, "connect")
    def no_backslash_escapes(dbapi_conn: Any, _: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")

    db.engine.dispose()  # new connections get the mode
    entries, outbox = _entries_and_outbox(db, AWKWARD)
    expected = {k: [(k, [k, i])] for i, k in enumerate(AWKWARD)}
    assert {k: e.targets for k, e in entries.items()} == expected
    assert outbox == [key_text((k,)) for k in AWKWARD]
