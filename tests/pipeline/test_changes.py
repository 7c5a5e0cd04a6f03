"""Tests for limsync.pipeline.changes: the per-call outcome behind exact ChangeSets."""

from __future__ import annotations

import numpy as np

from limsync.pipeline.changes import INSERTED, UNCHANGED, UPDATED, Outcome, _KeyIndex, digest


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
