"""Tests for limsync.pipeline.validation: one row, or a batch in one call."""

from __future__ import annotations

import uuid

import pytest
from example import Subject, subject_row

from limsync.errors import RowError
from limsync.pipeline.validation import validate_batch, validate_row


def test_a_batch_validates_like_its_rows() -> None:
    rows = [subject_row(n, subject_uuid=str(uuid.UUID(int=n + 1))) for n in range(3)]
    assert validate_batch(Subject.spec, rows) == [validate_row(Subject.spec, r) for r in rows]


def test_a_bad_row_in_a_batch_is_named() -> None:
    rows = [subject_row(0), subject_row(1, sex="X"), subject_row(2, nickname=None)]
    with pytest.raises(RowError) as info:
        validate_batch(Subject.spec, rows)
    err = info.value
    assert (err.key, err.column) == ({"subject_uuid": uuid.UUID(int=2)}, "sex")
