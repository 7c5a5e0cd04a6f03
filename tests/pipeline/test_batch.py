"""Tests for limsync.pipeline.batch: rows encoded once per plan, deduplicated, cut to size."""

from __future__ import annotations

import numpy as np
import pytest
from example import SCHEMAS, Session, session_row

from limsync.pipeline import Database
from limsync.pipeline.batch import encode_unique, literal_rows, plan_for, split_by_bytes


@pytest.fixture
def pipeline(db: Database) -> Database:
    db.declare(*SCHEMAS)
    return db


def test_rows_with_one_stored_key_are_one_row_the_last_winning(pipeline: Database) -> None:
    plan = plan_for(pipeline, Session.spec)
    assert plan_for(pipeline, Session.spec) is plan  # built once per table and database
    rows = [session_row(0, 1, n_trials=1), session_row(0, 2), session_row(0, 1, n_trials=3)]
    encoded = encode_unique(plan, Session.spec, [Session.spec.row_model(**r).model_dump()
                                                 for r in rows])  # fmt: skip
    assert [key for key, _, _ in encoded] == [Session.spec.key_of(rows[0]),
                                              Session.spec.key_of(rows[1])]  # fmt: skip
    n_trials = Session.spec.column_names.index("n_trials")
    assert encoded[0][2][n_trials] == 3  # the key keeps its first place, the last row its values


def test_parts_stay_under_the_byte_limit_and_a_larger_row_goes_alone(pipeline: Database) -> None:
    plan = plan_for(pipeline, Session.spec)
    rng = np.random.default_rng(7)
    # About 160 kB each as a blob (incompressible), twice that in hex on MySQL.
    rows = [session_row(0, n, trace=rng.random(20_000)) for n in range(4)]
    encoded = encode_unique(plan, Session.spec, rows)
    assert [len(p) for p in split_by_bytes(plan, encoded, 400_000)] == [1, 1, 1, 1]
    assert [len(p) for p in split_by_bytes(plan, encoded, 10**8)] == [4]
    assert [len(p) for p in split_by_bytes(plan, encoded, 1_000)] == [1, 1, 1, 1]


@pytest.mark.parametrize("backend", ["mysql"])  # literals are MySQL's way of sending rows
def test_mysql_rows_go_as_literals_that_quote_nothing_raw(db: Database) -> None:
    db.declare(*SCHEMAS)
    plan = plan_for(db, Session.spec)
    rows = [session_row(0, n, task_protocol=f"it's; DROP TABLE x; -- {n}") for n in range(3)]
    texts = literal_rows(Session.spec, plan, encode_unique(plan, Session.spec, rows))
    assert len(texts) == 3
    assert not any("it's" in t or "DROP" in t for t in texts)  # text travels as hex
