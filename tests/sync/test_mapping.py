"""Keys as JSON values (ledger targets, outbox): the same values as a JSON round trip."""

from __future__ import annotations

import enum
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from limsync.sync.mapping import key_json


class Sex(enum.StrEnum):
    FEMALE = "F"


class Level(enum.IntEnum):
    HIGH = 3


def round_trip(key: list[Any]) -> list[Any]:
    """The definition."""
    values: list[Any] = json.loads(json.dumps(key, default=str))
    return values


parts = st.one_of(
    st.text(),
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.uuids(),
    st.datetimes(),
    st.dates(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.sampled_from([Sex.FEMALE, Level.HIGH]),
)


@given(st.lists(parts, min_size=1, max_size=3))
def test_key_json_equals_a_json_round_trip(key: list[Any]) -> None:
    got = key_json(tuple(key))
    want = round_trip(key)
    assert got == want
    assert [type(v) for v in got] == [type(v) for v in want]
