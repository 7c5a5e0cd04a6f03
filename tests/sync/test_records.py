"""A batch's records on their way through the engine: identified, duplicates told apart, rows
validated, errors shortened for the quarantine."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import pydantic
import pytest
from pydantic import BaseModel, Field

from limsync.connectors.base import Stream
from limsync.pipeline import Key, Manual, Schema, ledger
from limsync.sync.identity import Identity, seen_id
from limsync.sync.records import (
    duplicates,
    identify,
    raw_key_text,
    short_error,
    validate_rows,
)
from limsync.sync.report import StreamReport
from limsync.sync.writer import Item


class Rec(BaseModel):
    id: int
    name: str


STREAM = Stream("recs", "recs", Rec, key=("id",))


def test_identify_splits_keys_read_before_from_new_ones_and_quarantines_invalid() -> None:
    seen = {seen_id(ledger.key_text((1,)))}  # key 1 was read by an earlier batch
    raws: list[dict[str, Any]] = [
        {"id": 1, "name": "again"},
        {"id": 2, "name": "first"},
        {"id": "x", "name": "bad"},
        {"id": 2, "name": "twice in the batch"},
    ]
    ided = identify(Identity(STREAM), raws, seen)
    assert [r.name for r in ided.records] == ["again", "first", "twice in the batch"]  # type: ignore[attr-defined]
    assert ided.keys == [(1,), (2,), (2,)]
    assert ided.first == [1] and ided.again == [0, 2]
    assert seen_id(ledger.key_text((2,))) in seen
    # Per key text, the hash of its first record in the batch.
    assert ided.asked == {"[1]": ided.hashes[0], "[2]": ided.hashes[1]}
    assert ided.hashes[1] != ided.hashes[2]
    [(key, stage, error, raw)] = ided.quarantined
    assert (key, stage, raw) == (raw_key_text(STREAM, raws[2]), "validate", raws[2])
    assert error.startswith("id: ")


def test_a_batch_of_keys_all_read_for_the_first_time() -> None:
    seen: set[int] = {seen_id(ledger.key_text((9,)))}
    ided = identify(Identity(STREAM), [{"id": n, "name": "x"} for n in range(3)], seen)
    assert ided.first == [0, 1, 2] and ided.again == []
    assert seen == {seen_id(ledger.key_text((n,))) for n in (0, 1, 2, 9)}
    again = identify(Identity(STREAM), [{"id": 2, "name": "x"}, {"id": 3, "name": "x"}], seen)
    assert again.first == [1] and again.again == [0]


def _item(key: int, digest: str, raw: dict[str, Any] | None = None) -> Item:
    rec = Rec(id=key, name="n")
    return Item((key,), ledger.key_text((key,)), raw or {}, rec, digest)


def test_duplicates_with_the_same_content_are_counted_others_quarantined() -> None:
    sr = StreamReport("recs")
    quarantined: list[tuple[str, str, str, Any]] = []
    dupes = [
        _item(1, "h1"),  # the same as earlier in this batch
        _item(2, "h2"),  # the same as the ledger's present entry
        _item(3, "changed", {"_source": "recs.csv:7"}),  # differs from the ledger's entry
        _item(4, "h4"),  # the ledger holds it as gone: not the same record
    ]
    batch = {"[1]": "h1"}
    entries = {"[2]": ("h2", "present"), "[3]": ("h3", "present"), "[4]": ("h4", "gone")}
    duplicates(dupes, batch, entries, sr, quarantined)
    assert sr.duplicates == 2
    assert [(k, stage) for k, stage, _, _ in quarantined] == [
        ("[3]", "duplicate"),
        ("[4]", "duplicate"),
    ]
    assert "read again at recs.csv:7 with different content" in quarantined[0][2]


shelf = Schema("shelf")


class Box(Manual):
    """A box."""

    __schema__ = shelf
    box_id: Annotated[int, Key]
    label: Annotated[str, Field(max_length=4)]


class Jar(Manual):
    """A jar."""

    __schema__ = shelf
    jar_id: Annotated[uuid.UUID, Key]


def test_validate_rows_validates_in_place_and_names_each_records_first_bad_row() -> None:
    box, jar = Box.spec, Jar.spec
    good = _item(1, "h")
    good.rows = [(box, {"box_id": "1", "label": "ok"}), (jar, {"jar_id": str(uuid.UUID(int=1))})]
    bad = _item(2, "h")
    bad.rows = [(box, {"box_id": 2, "label": "too long"}), (jar, {"jar_id": "not a uuid"})]
    errors = validate_rows([good, bad])
    assert list(errors) == [id(bad)]
    assert "label" in str(errors[id(bad)])  # its first bad row, in the mapping's order
    assert good.rows[0][1] == {"box_id": 1, "label": "ok"}
    assert good.rows[1][1] == {"jar_id": uuid.UUID(int=1)}


def test_short_error_keeps_three_errors_and_counts_the_rest() -> None:
    class Many(BaseModel):
        a: int
        b: int
        c: int
        d: int

    with pytest.raises(pydantic.ValidationError) as info:
        Many.model_validate({})
    text = short_error(info.value)
    assert text.count("Field required") == 3 and text.endswith("(+1 more)")
    assert text.startswith("a: ")


def test_raw_key_text_is_the_key_or_a_content_hash_when_the_key_is_unreadable() -> None:
    assert raw_key_text(STREAM, {"id": 5, "name": "x"}) == "[5]"
    unreadable = raw_key_text(STREAM, {"name": "no id"})
    assert unreadable.startswith("#raw:") and unreadable == raw_key_text(STREAM, {"name": "no id"})
