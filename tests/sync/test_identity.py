"""Batch identities: the same validation, keys, key texts and content hashes as one by one."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import pydantic
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from limsync.connectors.base import Stream
from limsync.pipeline import ledger
from limsync.sync.identity import Identity, content_hash, seen_id


class Inner(BaseModel):
    label: str
    at: dt.datetime


class Rec(BaseModel):
    id: uuid.UUID
    site: str
    value: float | None = None
    inner: list[Inner] = []
    extra: dict[str, Any] = {}
    age: int = 0  # volatile


STREAM = Stream("recs", "recs", Rec, key=("site", "id"), volatile={"age"})
ONE_KEY = Stream("recs", "recs", Rec, key=("id",))

raw_records = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.uuids().map(str),
            "site": st.text(),
            "value": st.none() | st.floats(allow_nan=False),
            "inner": st.lists(
                st.fixed_dictionaries({"label": st.text(), "at": st.datetimes().map(str)}),
                max_size=2,
            ),
            "extra": st.dictionaries(st.text(max_size=3), st.integers() | st.text(), max_size=2),
            "age": st.integers(min_value=0, max_value=10**6),
        }
    ),
    max_size=6,
)


@given(raw_records)
def test_a_batch_gives_what_each_record_gives(raws: list[dict[str, Any]]) -> None:
    for stream in (STREAM, ONE_KEY):
        ident = Identity(stream)
        valid, invalid = ident.validate(raws)
        assert invalid == []
        records = [rec for _, rec in valid]
        assert [raw for raw, _ in valid] == raws
        assert records == [Rec.model_validate(r) for r in raws]
        keys = ident.keys(records)
        assert keys == [stream.key_of(r) for r in records]
        assert ident.texts(keys) == [ledger.key_text(k) for k in keys]
        volatile = set(stream.volatile)
        assert ident.hashes(records) == [content_hash(r, volatile) for r in records]


def test_volatile_fields_do_not_change_the_hash() -> None:
    raw = {"id": str(uuid.UUID(int=1)), "site": 'é"\\', "inner": [{"label": "x", "at": "2026"}]}
    ident = Identity(STREAM)
    (_, a), (_, b) = ident.validate([{**raw, "age": 1}, {**raw, "age": 2}])[0]
    assert ident.hashes([a]) == ident.hashes([b])
    assert Identity(ONE_KEY).hashes([a]) != Identity(ONE_KEY).hashes([b])


def test_an_invalid_record_is_set_aside_alone() -> None:
    good = [{"id": str(uuid.UUID(int=i)), "site": "s"} for i in range(3)]
    bad = {"id": "not a uuid", "site": "s"}
    valid, invalid = Identity(STREAM).validate([good[0], bad, good[1], good[2]])
    assert [raw for raw, _ in valid] == good
    assert [raw for raw, _ in invalid] == [bad]
    assert isinstance(invalid[0][1], pydantic.ValidationError)
    assert invalid[0][1].errors()[0]["loc"] == ("id",)  # the record's own error, not the batch's


def test_seen_ids_are_128_bit_digests_of_the_key_text() -> None:
    a, b = seen_id('["a"]'), seen_id('["b"]')
    assert a != b and a == seen_id('["a"]') and 0 <= a < 2**128
    assert Identity.seen_ids(['["a"]', '["b"]']) == [a, b]


class Odd(BaseModel):
    """A UUID field whose validator returns text (the key text must still be the general one)."""

    id: Annotated[uuid.UUID, pydantic.AfterValidator(lambda u: f"<{u}>")]


def test_key_texts_of_uuid_keys() -> None:
    raws = [{"id": str(uuid.UUID(int=i))} for i in (1, 2**100)]
    for model in (Rec, Odd):
        stream = Stream("recs", "recs", model, key=("id",))
        ident = Identity(stream)
        records = [model.model_validate({**r, "site": "s"}) for r in raws]
        keys = ident.keys(records)
        assert ident.texts(keys) == [ledger.key_text(k) for k in keys]
