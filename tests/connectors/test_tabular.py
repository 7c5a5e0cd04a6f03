"""Instance-defined streams (Connector.instance_streams) and the shared record-source helpers."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import pydantic
import pytest

from limsync.connectors.base import Connector, ConnectorSettings, Stream, Streams
from limsync.connectors.tabular import (
    KeyTracker,
    RecordStreamSettings,
    key_hash,
    page_key_hashes,
    record_model,
)
from limsync.errors import ConfigError, DeclarationError


class ToySettings(ConnectorSettings):
    type: str = "toy_instance"
    streams: dict[str, RecordStreamSettings] = {}  # type: ignore[assignment]


class ToyInstance(Connector):
    type_name = "toy_instance"
    settings_model: ClassVar[type[ConnectorSettings]] = ToySettings
    instance_streams = True

    @classmethod
    def define_streams(cls, settings: ConnectorSettings) -> Sequence[Stream]:
        return [
            Stream(
                name,
                f"/data/{name}*.csv",
                record_model(name, conf.key),
                key=tuple(conf.key),
                volatile={"_source"},
            )
            for name, conf in settings.streams.items()
        ]


def make(name: str = "inst", **streams: Any) -> ToyInstance:
    return ToyInstance(name, ToyInstance.parse_settings({"streams": streams}, name=name))


def test_each_instance_has_its_own_streams() -> None:
    a = make("a", subjects={"key": ["id"]})
    b = make("b", weighings={"key": ["subject", "date"]}, sessions={"key": ["id"]})
    assert list(a.streams) == ["subjects"]
    assert list(b.streams) == ["weighings", "sessions"]
    assert list(ToyInstance.streams) == []  # the class declares none
    assert b.stream("weighings").key == ("subject", "date")
    assert b.stream_settings("sessions").delete_policy == "flag"
    with pytest.raises(ConfigError, match="has no stream 'subjects'"):
        b.stream("subjects")


def test_definitions_are_checked_with_the_config_place() -> None:
    with pytest.raises(ConfigError, match=r"connectors\.inst\.streams\.Bad: stream names must"):
        make(Bad={"key": ["id"]})
    with pytest.raises(ConfigError, match=r"connectors\.inst\.streams: define at least one"):
        make()


def test_declaration_mistakes_fail_when_the_class_is_defined() -> None:
    with pytest.raises(DeclarationError, match="needs define_streams"):

        class NoDefine(Connector):
            type_name = "no_define"
            instance_streams = True

    with pytest.raises(DeclarationError, match="define streams in define_streams"):

        class Both(Connector):
            type_name = "both"
            instance_streams = True
            streams = Streams(Stream("x", "x", record_model("x", ["id"]), key=("id",)))


def test_record_model_is_permissive_but_checks_keys() -> None:
    model = record_model("old subjects", ["subject_id", "lab"])
    assert model.__name__ == "OldSubjectsRecord"
    rec = model.model_validate({"subject_id": "S1", "lab": 3, "Odd Column": "x", "_source": "a:2"})
    assert rec.model_dump() == {"subject_id": "S1", "lab": 3, "Odd Column": "x", "_source": "a:2"}
    for bad in ({"lab": "x"}, {"subject_id": "  ", "lab": "x"}, {"subject_id": None, "lab": "x"}):
        with pytest.raises(pydantic.ValidationError):
            model.model_validate(bad)
    with pytest.raises(pydantic.ValidationError, match=r"first at a\.csv:3"):
        model.model_validate({"subject_id": "S1", "lab": "x", "_invalid": "dup, first at a.csv:3"})


def test_key_tracker_finds_repeats_within_and_across_pages_and_merges() -> None:
    tracker = KeyTracker(buffer=8)
    rng = random.Random(5)
    keys = [(f"S{rng.randrange(40)}",) for _ in range(200)]
    seen: set[tuple[str]] = set()
    expected = []
    for k in keys:
        expected.append(k in seen)
        seen.add(k)
    got: list[bool] = []
    for start in range(0, len(keys), 7):
        got.extend(tracker.add_page([key_hash(k) for k in keys[start : start + 7]]))
    assert got == expected
    assert len(tracker) == len(seen)
    assert tracker.add_page([]) == []


def test_record_model_names_every_bad_key_column_and_keeps_the_field_layout() -> None:
    model = record_model("weighings", ["subject", "date", "n"])
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate({"subject": " \t", "n": None, "w": "1"})
    assert [(e["loc"], e["type"], e["msg"]) for e in info.value.errors()] == [
        (("subject",), "blank_key", "key column is empty"),
        (("date",), "missing", "Field required"),
        (("n",), "blank_key", "key column is empty"),
    ]
    assert info.value.title == "WeighingsRecord"
    # Only "date" missing: pydantic's own error, located at the column.
    with pytest.raises(pydantic.ValidationError, match=r"date\n  Field required"):
        model.model_validate({"subject": "S1", "n": 0})
    # Falsy but not blank values are keys; any mapping is accepted, not only dicts.
    rec = model.model_validate(MappingProxyType({"subject": "S1", "date": 0, "n": False, "x": 1}))
    # Key columns first, extras after, as the engine's content hash has always seen them.
    assert rec.model_dump_json() == '{"subject":"S1","date":0,"n":false,"x":1}'
    with pytest.raises(pydantic.ValidationError, match="key column is empty"):
        model.model_validate(MappingProxyType({"subject": "", "date": 1, "n": 1}))
    # A falsy _invalid is no reason.
    assert model.model_validate({"subject": "S1", "date": 1, "n": 1, "_invalid": ""})


def test_page_key_hashes_match_key_hash_and_skip_blank_keys() -> None:
    page: list[Mapping[str, object]] = [
        {"a": "S1", "b": "2020"},
        {"a": "S1", "b": "2021"},
        {"a": "S1", "b": "2020", "c": "other"},
        {"a": None, "b": "2020"},
        {"a": "", "b": "x"},
        {"b": "2020"},  # a short row: no "a"
        {"a": 0, "b": 0},  # hash 0, like "": tracked all the same
        {"a": ["list"], "b": {"d": 1}},  # JSON values that Python cannot hash
        {"a": "  ", "b": "y"},  # blank but not empty: tracked (it fails validation anyway)
    ]
    hashes, tracked = page_key_hashes(page, ["a", "b"])
    assert tracked.tolist() == [True, True, True, False, False, False, True, True, True]
    keys = [(r.get("a"), r.get("b")) for r in page]
    assert hashes.tolist() == [key_hash(k) for k in keys]
    assert hashes[0] == hashes[2] and hashes[0] != hashes[1]
    assert key_hash(("S1", "2020")) != key_hash(("2020", "S1"))
    single, tracked = page_key_hashes(page, ["a"])
    assert single.tolist() == [key_hash((r.get("a"),)) for r in page]
    assert tracked.tolist() == [True, True, True, False, False, False, True, True, True]


def test_key_tracker_takes_numpy_pages() -> None:
    tracker = KeyTracker(buffer=4)
    first = tracker.repeats(np.array([5, 3, 5, -1], dtype=np.int64))
    assert first.tolist() == [False, False, True, False]
    again = tracker.repeats(np.array([3, 7, 8, 9, 7], dtype=np.int64))  # merges past 4
    assert again.tolist() == [True, False, False, False, True]
    assert tracker.repeats(np.array([-1, 9, 10], dtype=np.int64)).tolist() == [True, True, False]
    assert len(tracker) == 7
    assert tracker.repeats(np.empty(0, dtype=np.int64)).tolist() == []
