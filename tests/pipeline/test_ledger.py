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
from limsync.pipeline.ledger import key_text, targets_text, targets_text_of


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
    st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))])),
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
    # The writer's way: key texts built already, in a list (one pair: its shortcut).
    assert targets_text_of([(table, key_text(tuple(key))) for table, key in pairs]) == expected


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


def _ledger_of(db: Database, keys: list[str]) -> state.StateTables:
    """A ledger holding ``keys`` (key i with hash ``{i:032x}``), the first two gone, and an
    entry of another stream with the same key as the first."""
    st = state.ensure(db)
    with db.transaction() as conn:
        entries = [(k, f"{i:032x}", [("t.x", (i,))]) for i, k in enumerate(keys)]
        ledger.record(conn, st, "c", "s", entries, 1, set())
        ledger.record(conn, st, "c", "other", [(keys[2], "f" * 32, [])], 1, set())
        ledger.mark(conn, st, "c", "s", keys[:2], "gone", 2)
    return st


def test_mismatches_answer_only_keys_not_present_with_that_hash(db: Database) -> None:
    """Absent, gone or differing keys come back with what the ledger holds; the others not."""
    keys = [f'["k{i}"]' for i in range(2500)]  # three chunks of 1,000
    st = _ledger_of(db, keys)
    asked = {k: f"{i:032x}" for i, k in enumerate(keys)}
    asked[keys[0]] = "e" * 32  # gone, and a different hash
    asked[keys[1001]] = "e" * 32  # present, a different hash
    asked[keys[2499]] = f"{2499:031x}"  # a prefix of the stored hash is not the hash
    asked['["missing"]'] = "a" * 32
    with db.engine.connect() as conn:
        odd = ledger.mismatches(conn, st, "c", "s", asked)
        # Keys of another stream are not this stream's; none asked, none answered.
        other = ledger.mismatches(conn, st, "c", "other", {keys[2]: f"{2:032x}"})
        assert ledger.mismatches(conn, st, "c", "s", {}) == {}
    assert odd == {
        keys[0]: (f"{0:032x}", "gone"),
        keys[1]: (f"{1:032x}", "gone"),  # gone with the same hash: not present
        keys[1001]: (f"{1001:032x}", "present"),
        keys[2499]: (f"{2499:032x}", "present"),
        '["missing"]': None,
    }
    assert other == {keys[2]: ("f" * 32, "present")}


def test_mismatches_of_an_unchanged_chunk_transfer_no_row_per_key(
    db: Database, backend: str
) -> None:
    """What makes a re-sync cheap: an unchanged chunk answers one row on MySQL, none elsewhere."""
    keys = [f'["k{i}"]' for i in range(1000)]
    st = _ledger_of(db, keys)
    part = [(k, f"{i:032x}") for i, k in enumerate(keys)][2:]
    with db.engine.connect() as conn:
        cursor = conn.connection.cursor()
        if backend == "mysql":
            cursor.execute(ledger._mismatch_sql_mysql(conn, st, "c", "s", part))
            assert cursor.fetchall() == ((0, None),)
        else:
            cursor.execute(*ledger._mismatch_sql(conn, st, "c", "s", part))
            assert cursor.fetchall() == []
        cursor.close()


def test_mismatches_use_the_ledger_key(db: Database, backend: str) -> None:
    """The comparison looks each key up by the primary key's index, whatever the statistics
    say: a ledger loaded moments ago must not be scanned for every batch."""
    keys = [f'["k{i}"]' for i in range(1000)]
    st = _ledger_of(db, keys)
    part = [(k, f"{i:032x}") for i, k in enumerate(keys)]
    with db.engine.connect() as conn:
        cursor = conn.connection.cursor()
        if backend == "mysql":
            sql = ledger._mismatch_sql_mysql(conn, st, "c", "s", part)
            cursor.execute("EXPLAIN " + sql[sql.index("WITH") :])
            plan = {row[2]: (row[3], row[5]) for row in cursor.fetchall()}
            assert plan["l"] == ("eq_ref", "PRIMARY")
        elif backend == "postgres":
            sql, params = ledger._mismatch_sql(conn, st, "c", "s", part)
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(r[0] for r in cursor.fetchall())
            assert "Index Scan" in plan and "_pkey" in plan and "Hash" not in plan, plan
        else:
            sql, params = ledger._mismatch_sql(conn, st, "c", "s", part)
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            plan = "\n".join(str(r[-1]) for r in cursor.fetchall())
            assert "SEARCH l USING INDEX sqlite_autoindex" in plan, plan
        cursor.close()


def test_mismatches_answer_cut_short_is_an_error() -> None:
    """GROUP_CONCAT stops at group_concat_max_len with a warning only: a list shorter than its
    count must never pass for "the rest is unchanged"."""
    part = [('["a"]', "0" * 32), ('["b"]', "1" * 32)]
    answer = f"1,{('ab' * 16).encode().hex()},{b'gone'.hex()} 0"
    assert dict(ledger._mismatch_rows_mysql((2, answer), part)) == {
        '["b"]': ("ab" * 16, "gone"),
        '["a"]': None,
    }
    with pytest.raises(RuntimeError, match="2 keys differ, 1 read"):
        dict(ledger._mismatch_rows_mysql((2, "0"), part))


# Every character a SQL literal must escape (quotes, backslashes, NUL, Ctrl-Z, line ends), a
# driver's parameter marker, text beyond ASCII, and the separator of the batched escape.
AWKWARD = ["o'b\"r\\i\0e\032n\r\n", "100% %s %%", "é 中 \u2028 😀", "'", "\\", "", "a\x01b"]


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


def _check_mismatches(db: Database, keys: list[str]) -> None:
    """The comparison of ``keys`` as :func:`_entries_and_outbox` recorded them: equal hashes
    match, a changed hash returns the stored one, a key changed by one character is absent."""
    st = state.ensure(db)
    same = {k: f"{i:032x}" for i, k in enumerate(keys)}
    changed = {k: "f" * 32 for k in keys}
    edited = {k + "~": h for k, h in same.items()}
    with db.engine.connect() as conn:
        assert ledger.mismatches(conn, st, "c", "s", same) == {}
        assert ledger.mismatches(conn, st, "c", "s", changed) == {
            k: (h, "present") for k, h in same.items()
        }
        assert ledger.mismatches(conn, st, "c", "s", edited) == dict.fromkeys(edited)


def test_ledger_and_outbox_keep_every_character(db: Database, backend: str) -> None:
    """Entries and outbox rows come back exactly as written, whatever their text holds."""
    keys = awkward(backend)
    entries, outbox = _entries_and_outbox(db, keys)
    assert sorted(entries) == sorted(keys)
    for i, k in enumerate(keys):
        assert entries[k].content_hash == f"{i:032x}"
        assert entries[k].targets == [(k, [k, i])]
    assert outbox == [key_text((k,)) for k in keys]
    _check_mismatches(db, keys)


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
    _check_mismatches(db, AWKWARD)


def test_targets_and_outbox_keys_given_as_key_texts(db: Database) -> None:
    """A caller that built the key texts already passes them: the same entries and rows."""
    st = state.ensure(db)
    keys = [("a", 1), ("b'", 2)]
    text = ledger.targets_text_of([("t.x", key_text(k)) for k in keys])
    assert text == ledger.targets_text([("t.x", k) for k in keys])
    with db.transaction() as conn:
        ledger.record(conn, st, "c", "s", [("[1]", "h", text)], 7, set())
        assert ledger.emit_texts(conn, st, "t.x", [key_text(k) for k in keys], "insert", 7) == 2
    with db.engine.connect() as conn:
        entry = ledger.lookup(conn, st, "c", "s", ["[1]"])["[1]"]
        rows = conn.execute(sa.select(st.outbox.c.row_key).order_by(st.outbox.c.id)).all()
    assert entry.targets == [("t.x", ["a", 1]), ("t.x", ["b'", 2])]
    assert [r[0] for r in rows] == ['["a",1]', '["b\'",2]']
