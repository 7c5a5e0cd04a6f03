"""Tests for limsync.pipeline.changes: the per-call outcome behind exact ChangeSets."""

from __future__ import annotations

import datetime as dt
import enum
import gc
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from limsync.pipeline.changes import (
    INSERTED,
    UNCHANGED,
    UPDATED,
    ChangeSet,
    Outcome,
    SpilledKeys,
    _KeyIndex,
    digest,
)
from limsync.pipeline.spill import dump_key, dumper, load_key


def test_digest_tells_rows_apart_as_equality_does() -> None:
    assert digest((-1, "a")) != digest((-2, "a"))  # hash(-1) == hash(-2): a digest must not
    assert digest((0.0, None)) == digest((-0.0, None))  # 0.0 == -0.0
    assert digest((1.5, b"x")) == digest((1.5, b"x"))
    assert digest((1.5, b"x")) != digest((1.5, b"y"))


def test_key_index_finds_every_position_of_a_hash() -> None:
    index = _KeyIndex()
    for start in range(0, 50, 5):  # ten runs, merged as a binary counter
        hashes = np.arange(start, start + 5, dtype=np.int64) % 20  # repeats: "collisions"
        index.add(hashes, np.arange(start, start + 5, dtype=np.int64))
    found = index.candidates(np.array([3, 99, 19], dtype=np.int64))
    assert sorted(found) == [0, 2]
    assert sorted(found[0]) == [3, 23, 43] and sorted(found[2]) == [19, 39]


def test_outcome_keeps_first_appearance_order_and_moves_statuses() -> None:
    outcome = Outcome(lambda key: (str(key[0]),))
    keys = [(1,), (2,), (3,)]
    positions, hashes = outcome.earlier([("1",), ("2",), ("3",)])
    assert positions == [-1, -1, -1]
    outcome.add(keys, bytes([INSERTED, UNCHANGED, UPDATED]), [0, 0, 77], hashes)
    positions, _ = outcome.earlier([("3",), ("4",), ("2",)])
    assert positions == [2, -1, 1]
    assert outcome.before(2) == 77
    outcome.set(1, UPDATED, 5)
    outcome.set(2, UNCHANGED)
    cs = outcome.changeset("t")
    assert (cs.inserted, cs.updated, cs.unchanged) == ([(1,)], [(2,)], [(3,)])


# --- spilling to a temporary file ----------------------------------------------------------------


class Colour(enum.StrEnum):
    """A str subclass: stored by pickle, so it comes back as a member, not a plain str."""

    RED = "red"


KEYS_OF_EVERY_TYPE = [
    (1,),
    (-(2**70), 0),  # beyond int64
    ("", "ä\udcff"),  # a lone surrogate
    (uuid.UUID(int=7),),
    (dt.date(2026, 1, 2),),
    (dt.datetime(2026, 1, 2, 3, 4, 5, 678901),),
    (dt.datetime(2026, 11, 1, 1, 30, fold=1),),
    (dt.datetime(2026, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))),),
    (Decimal("1.50"), Decimal("-0"), Decimal("1E+3")),
    (b"\x00\xff", None, True, 1.5, -0.0),
    (Colour.RED, 3),
    (uuid.UUID(int=8), "probe00", dt.datetime(2026, 1, 2), 4),  # a composite key
]


def exact(keys: Any) -> list[tuple[tuple[type, Any], ...]]:
    """Keys with the type of every value: 1 == 1.0 == True, but not as keys come back."""
    return [tuple((v.__class__, v) for v in key) for key in keys]


def identity(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return key


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("limsync-changes-*"))


@pytest.fixture
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Spill files go to a directory of the test's own, where the test can count them."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def record(outcome: Outcome, keys: list[tuple[Any, ...]], statuses: list[int]) -> None:
    """Add keys new to the outcome, as upsert does."""
    _, hashes = outcome.earlier(keys)
    outcome.add(keys, bytes(statuses), [0] * len(keys), hashes)


@pytest.mark.parametrize("key", KEYS_OF_EVERY_TYPE, ids=repr)
def test_every_key_type_round_trips_through_the_file_format(key: tuple[Any, ...]) -> None:
    assert exact([load_key(dump_key(key))]) == exact([key])


def test_spilled_keys_come_back_as_the_same_values_in_order(spill_dir: Path) -> None:
    outcome = Outcome(identity, memory_keys=4)
    statuses = [i % 3 for i in range(len(KEYS_OF_EVERY_TYPE))]
    for start in range(0, len(KEYS_OF_EVERY_TYPE), 3):
        record(outcome, KEYS_OF_EVERY_TYPE[start : start + 3], statuses[start : start + 3])
    with outcome.changeset("t") as cs:
        assert isinstance(cs.inserted, SpilledKeys) and len(spill_files(spill_dir)) == 1
        for status, got in enumerate((cs.inserted, cs.updated, cs.unchanged)):
            want = [k for k, s in zip(KEYS_OF_EVERY_TYPE, statuses, strict=True) if s == status]
            assert exact(got) == exact(want)
            assert got == want and want == got and len(got) == len(want) == 4
            assert got[0] == want[0] and got[-1] == want[-1] and got[1:3] == want[1:3]
            assert got[::2] == want[::2] and list(reversed(got)) == want[::-1]
            assert got != want[:-1] and got != [*want[:-1], (0,)]
    assert spill_files(spill_dir) == []


def test_a_key_seen_before_the_spill_keeps_its_exact_status(spill_dir: Path) -> None:
    outcome = Outcome(identity, memory_keys=2)
    a, b, c = (1,), (2,), (3,)
    record(outcome, [a, b, c], [UNCHANGED, INSERTED, UPDATED])  # more than two keys: spilled
    assert len(spill_files(spill_dir)) == 1
    record(outcome, [(4,)], [INSERTED])  # in memory, after the spill
    positions, _ = outcome.earlier([(4,), c, (5,), a, b])
    assert positions == [3, 2, -1, 0, 1]
    assert [outcome.status(p) for p in (3, 2, 0, 1)] == [INSERTED, UPDATED, UNCHANGED, INSERTED]
    outcome.set(0, UPDATED, 42)  # a: stored unchanged until now, changed by this batch
    outcome.set(2, UNCHANGED)  # c: restored
    positions, _ = outcome.earlier([a, c])  # the next batch sees what the last one set
    assert positions == [0, 2]
    assert (outcome.status(0), outcome.before(0), outcome.status(2)) == (UPDATED, 42, UNCHANGED)
    outcome.set(0, UPDATED)  # changed again: keeps the digest of the row from before the call
    _ = outcome.earlier([a])
    assert outcome.before(0) == 42
    cs = outcome.changeset("t")
    assert (cs.inserted, cs.updated, cs.unchanged) == ([b, (4,)], [a], [c])
    assert cs.counts() == {"inserted": 2, "updated": 1, "unchanged": 1} and cs.changed


def test_as_many_keys_as_the_bound_stay_in_memory(spill_dir: Path) -> None:
    outcome = Outcome(identity, memory_keys=3)
    record(outcome, [(1,), (2,), (3,)], [INSERTED] * 3)  # a call of exactly memory_keys rows
    assert spill_files(spill_dir) == []
    record(outcome, [(4,)], [INSERTED])  # one more: all of them move
    assert len(spill_files(spill_dir)) == 1
    with outcome.changeset("t") as cs:
        assert cs.inserted == [(1,), (2,), (3,), (4,)]


def test_equal_hashes_of_different_keys_are_told_apart_in_the_file(spill_dir: Path) -> None:
    assert hash((-1,)) == hash((-2,))  # CPython: hash(-1) == hash(-2)
    outcome = Outcome(identity, memory_keys=1)
    record(outcome, [(-1,)], [INSERTED])
    record(outcome, [(-2,)], [UNCHANGED])
    positions, _ = outcome.earlier([(-2,), (-1,), (-3,)])
    assert positions == [1, 0, -1]
    assert outcome.status(1) == UNCHANGED


def test_the_file_goes_when_the_changeset_is_collected_or_closed(spill_dir: Path) -> None:
    def spilled() -> ChangeSet:
        outcome = Outcome(identity, memory_keys=2)
        record(outcome, [(1,), (2,), (3,)], [INSERTED, INSERTED, UNCHANGED])
        return outcome.changeset("t")

    cs = spilled()
    assert len(spill_files(spill_dir)) == 1
    del cs
    gc.collect()
    assert spill_files(spill_dir) == []

    cs = spilled()
    cs.close()
    assert spill_files(spill_dir) == []
    cs.close()  # idempotent
    assert cs.counts() == {"inserted": 0, "updated": 0, "unchanged": 0}

    outcome = Outcome(identity, memory_keys=2)
    record(outcome, [(1,), (2,), (3,)], [INSERTED, INSERTED, INSERTED])
    assert len(spill_files(spill_dir)) == 1
    outcome.close()  # what upsert does when a batch fails
    assert spill_files(spill_dir) == []


def test_a_spilled_changeset_extends_and_shows_like_a_list(spill_dir: Path) -> None:
    outcome = Outcome(identity, memory_keys=2)
    record(outcome, [(n,) for n in range(5)], [INSERTED] * 5)
    cs = outcome.changeset("t")
    assert repr(cs.inserted) == "SpilledKeys([(0,), (1,), (2,), ...], len=5)"
    total = ChangeSet("t", inserted=[(9,)], unchanged=[(8,)])
    total.extend(cs)
    total.extend(ChangeSet("t", inserted=[(10,)]))
    assert total == ChangeSet("t", [(9,), *[(n,) for n in range(5)], (10,)], [], [(8,)])
    assert isinstance(total.inserted, SpilledKeys)
    assert total.inserted[0] == (9,) and total.inserted[3] == (2,) and total.inserted[-1] == (10,)
    total.close()  # the file is shared with cs: it goes for both, and both are empty
    assert spill_files(spill_dir) == []
    assert cs.inserted == [] and len(cs.inserted) == 0 and not cs.changed


def test_memory_keys_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="memory_keys"):
        Outcome(identity, memory_keys=-1)


@pytest.mark.parametrize(
    "keys",
    [
        [(1,), (-(2**70),)],
        [("a", "b"), ("", "ä\udcff")],
        [(uuid.UUID(int=1),), (uuid.UUID(int=2),)],
        [(dt.date(2026, 1, 2),), (dt.date(1, 1, 1),)],
        [(Decimal("1.50"),), (Decimal("-0"),)],
        [(uuid.UUID(int=1), "probe00", 3), (uuid.UUID(int=2), "probe01", 4)],  # some converted
        [(uuid.UUID(int=1), dt.datetime(2026, 1, 2)), (uuid.UUID(int=2), dt.datetime(2026, 1, 3))],
        [(1,), ("1",)],  # a column of mixed types
        [(1,), (1, 2)],  # keys of different lengths
    ],
    ids=repr,
)
def test_the_format_specialised_on_column_types_round_trips(keys: list[tuple[Any, ...]]) -> None:
    dump = dumper(keys)
    assert exact([load_key(dump(k)) for k in keys]) == exact(keys)
