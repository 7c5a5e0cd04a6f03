"""Instance-defined streams (Connector.instance_streams) and the shared record-source helpers."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar

import pydantic
import pytest

from limsync.connectors.base import Connector, ConnectorSettings, Stream, Streams
from limsync.connectors.tabular import KeyTracker, RecordStreamSettings, key_hash, record_model
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
