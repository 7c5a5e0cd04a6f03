"""Tests for limsync.connectors.base: declarations, settings, the default read, check()."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from pydantic import BaseModel, SecretStr

from limsync.connectors.base import (
    CheckResult,
    Connector,
    ConnectorSettings,
    Cursor,
    Key,
    ReadContext,
    Stream,
    Streams,
    StreamSettings,
    nothing_known,
)
from limsync.connectors.pagination import LimitOffset
from limsync.errors import ConfigError, DeclarationError, RecordError

BASE = "https://lims.test/api"
ROOT = Path(__file__).resolve().parents[2]


class Lab(BaseModel):
    name: str
    building: str | None = None


class Animal(BaseModel):
    id: uuid.UUID
    lab: str
    modified: datetime | None = None
    age_days: int | None = None


class ToySettings(ConnectorSettings):
    type: Literal["toy"] = "toy"
    base_url: str = BASE
    page_size: int = 2
    password: SecretStr | None = None


def toy_streams() -> Streams:
    return Streams(
        Stream("labs", "labs", Lab, key=("name",)),
        Stream(
            "animals",
            "animals",
            Animal,
            key=("id",),
            cursor=Cursor("modified", lookback=timedelta(hours=1)),
            volatile={"age_days"},
        ),
        Stream("lab_animals", "labs/{name}/animals", Animal, key=("id",), parent="labs"),
    )


class ToyConnector(Connector):
    type_name = "toy"
    settings_model = ToySettings
    paginator = LimitOffset(page_size=2, max_page_size=10)
    streams = toy_streams()

    def cursor_params(self, stream: str, since: datetime) -> dict[str, str]:
        return {"modified_after": since.isoformat()}


def ctx(full: bool = True, cursor: str | None = None) -> ReadContext:
    return ReadContext(full=full, cursor=cursor, known=nothing_known)


def toy(**settings: Any) -> ToyConnector:
    return ToyConnector("toy", ToySettings(**settings))


def params_of(call: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(call.request.url).query).items()}


# --- declarations ---------------------------------------------------------------------------------


def declare(*streams: Stream, **attrs: Any) -> type[Connector]:
    body: dict[str, Any] = {
        "type_name": "bad",
        "settings_model": ToySettings,
        "streams": Streams(*streams),
        **attrs,
    }
    return type("BadConnector", (Connector,), body)


def good() -> Stream:
    return Stream("labs", "labs", Lab, key=("name",))


@pytest.mark.parametrize(
    ("streams", "message"),
    [
        ((Stream("Labs", "labs", Lab, key=("name",)),), "lower snake case"),
        ((Stream("lab-s", "labs", Lab, key=("name",)),), "lower snake case"),
        ((good(), Stream("labs", "labs2", Lab, key=("name",))), "declared twice"),
        ((Stream("labs", "labs", Lab, key=("nam",)),), "key field(s) nam not on Lab"),
        ((Stream("labs", "labs", Lab, key=()),), "at least one field"),
        ((Stream("labs", "labs", Lab, key=("name", "name")),), "repeats"),
        ((Stream("labs", "labs", Lab, key=("name",), volatile={"bldg"}),), "volatile field"),
        ((Stream("labs", "labs", Lab, key=("name",), volatile={"name"}),), "cannot be volatile"),
        ((Stream("labs", "labs", Lab, key=("name",), cursor=Cursor("mtime")),), "cursor field"),
        (
            (Stream("labs", "labs", Lab, key=("name",), cursor=Cursor("name", timedelta(-1))),),
            "lookback",
        ),
        ((Stream("labs", "/labs", Lab, key=("name",)),), "relative"),
        ((Stream("labs", "https://x/labs", Lab, key=("name",)),), "relative"),
        ((Stream("labs", "labs", dict, key=("name",)),), "BaseModel"),  # type: ignore[arg-type]
        ((Stream("labs", "labs/{name}", Lab, key=("name",)),), "need a parent"),
        ((Stream("labs", "labs/{name", Lab, key=("name",), parent="x"),), "not a valid template"),
        ((Stream("labs", "labs", Lab, key=("name",), parent="labs"),), "its own parent"),
        ((Stream("animals", "a", Animal, key=("id",), parent="labs"), good()), "declared before"),
        ((good(), Stream("a", "labs/{nme}/a", Animal, key=("id",), parent="labs")), "nme not on"),
        ((Stream("labs", "labs", Lab, key=("name",), params={"x": 1}),), "param"),  # type: ignore[dict-item]
        ((), "declares no streams"),
    ],
)
def test_declaration_errors_name_class_stream_and_problem(
    streams: tuple[Stream, ...], message: str
) -> None:
    with pytest.raises(DeclarationError) as info:
        declare(*streams)
    text = str(info.value)
    assert message in text
    assert "BadConnector" in text
    if streams:
        assert repr(streams[-1].name) in text or repr(streams[0].name) in text


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"type_name": "Bad Name"}, "type_name"),
        ({"type_name": None}, "type_name"),
        ({"settings_model": BaseModel}, "settings_model"),
        ({"paginator": object()}, "paginator"),
        ({"streams": "labs"}, "streams must be"),
        ({"streams": {"other": good()}}, "declared under the name 'other'"),
        ({"streams": [good(), "labs"]}, "is not a Stream"),
    ],
)
def test_class_level_declaration_errors(attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        declare(good(), **attrs)


def test_plain_sequences_and_mappings_are_normalised_in_order() -> None:
    as_list = declare(streams=[good(), Stream("animals", "a", Animal, key=("id",))])
    as_dict = declare(streams={"labs": good()})
    assert list(as_list.streams) == ["labs", "animals"]
    assert isinstance(as_list.streams, Streams) and list(as_dict.streams) == ["labs"]


def test_abstract_intermediate_classes_are_not_checked() -> None:
    class HTTPBase(Connector, abstract=True):
        pass

    class Concrete(HTTPBase):
        type_name = "concrete"
        streams = Streams(good())

    assert list(Concrete.streams) == ["labs"]


def test_stream_normalises_its_declaration() -> None:
    stream = Stream("labs", "labs/{name}", Lab, key="name", volatile={"building"})  # type: ignore[arg-type]
    assert stream.key == ("name",)
    assert stream.volatile == frozenset({"building"})
    assert stream.placeholders == ("name",)
    assert hash(stream) == hash(Stream("labs", "labs/{name}", Lab, key=("name",)))


def test_key_from_raw_coerces_like_the_model() -> None:
    stream = ToyConnector.streams["animals"]
    raw = {"id": "8ad2ce5a-e7fe-48ef-a5d0-bca19d3f1d67", "lab": "x"}
    key = stream.key_from_raw(raw)
    assert key == (uuid.UUID(raw["id"]),)
    assert key == stream.key_of(Animal.model_validate(raw))


# --- settings -------------------------------------------------------------------------------------


def test_parse_settings_rejects_unknown_streams_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        ToyConnector.parse_settings({"streams": {"animls": {}}}, name="mine")
    assert "animls" in str(info.value) and "labs, animals, lab_animals" in str(info.value)
    assert "mine" in str(info.value)


def test_parse_settings_never_echoes_values() -> None:
    secret = "hunter2-Sup3rSecret"
    with pytest.raises(ConfigError) as info:
        ToyConnector.parse_settings({"passwd": secret, "password": ["x", secret]})
    assert "passwd" in str(info.value) and "password" in str(info.value)
    assert secret not in str(info.value)


def test_settings_models_forbid_extra_fields_and_check_values() -> None:
    with pytest.raises(ValueError):
        StreamSettings.model_validate({"delete_policy": "purge"})
    with pytest.raises(ValueError):
        StreamSettings(delete_threshold=1.5)
    with pytest.raises(ValueError):
        StreamSettings(lookback=timedelta(hours=-1))
    with pytest.raises(ValueError):
        StreamSettings.model_validate({"tables": {"subject": {"tabel": "x"}}})
    with pytest.raises(ValueError):
        ToySettings(page_sise=3)  # type: ignore[call-arg]
    parsed = ToyConnector.parse_settings(
        {"streams": {"animals": {"lookback": "PT2H", "tables": {"animal": {"rename": {"a": "b"}}}}}}
    )
    assert parsed.streams["animals"].lookback == timedelta(hours=2)
    assert parsed.streams["animals"].tables["animal"].rename == {"a": "b"}


def test_constructor_checks_settings() -> None:
    with pytest.raises(ConfigError, match="unknown stream"):
        ToyConnector("t", ToySettings(streams={"nope": StreamSettings()}))
    with pytest.raises(ConfigError, match="above the maximum 10"):
        ToyConnector("t", ToySettings(streams={"labs": StreamSettings(page_size=11)}))
    with pytest.raises(ConfigError, match="stream 'labs': page size 50 is above"):
        ToyConnector("t", ToySettings(page_size=50))
    with pytest.raises(ConfigError, match="must be ToySettings"):
        ToyConnector("t", ConnectorSettings(type="toy"))


def test_page_size_and_lookback_overrides() -> None:
    connector = toy(
        page_size=7, streams={"animals": StreamSettings(page_size=3, lookback=timedelta(0))}
    )
    assert connector.page_size("animals") == 3 and connector.page_size("labs") == 7
    assert connector.lookback("animals") == timedelta(0)
    assert toy().lookback("animals") == timedelta(hours=1)
    assert toy().since("animals", ctx(cursor="2026-11-01T10:00:00")) == datetime(2026, 11, 1, 9)
    assert toy().since("labs", ctx(cursor="2026-11-01T10:00:00")) is None
    with pytest.raises(ConfigError, match="not an ISO datetime"):
        toy().since("animals", ctx(cursor="yesterday"))
    with pytest.raises(ConfigError, match="no stream 'cats'"):
        toy().stream("cats")


# --- reading --------------------------------------------------------------------------------------


def add_list(path: str, records: list[dict[str, Any]]) -> None:
    def callback(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        q = {k: v[0] for k, v in parse_qs(urlsplit(request.url or "").query).items()}
        limit, offset = int(q["limit"]), int(q["offset"])
        body = {"count": len(records), "results": records[offset : offset + limit]}
        return 200, {}, json.dumps(body)

    responses.add_callback(responses.GET, f"{BASE}/{path}", callback=callback)


ANIMALS = [
    {"id": str(uuid.UUID(int=i)), "lab": "a b", "modified": "2026-11-01T10:00:00"}
    for i in range(1, 4)
]


@responses.activate
def test_default_read_pages_the_stream_path() -> None:
    add_list("animals", ANIMALS)
    pages = list(toy().read("animals", ctx()))
    assert [len(p) for p in pages] == [2, 1]
    assert [r["id"] for p in pages for r in p] == [a["id"] for a in ANIMALS]
    assert "modified_after" not in params_of(responses.calls[0])


@responses.activate
def test_incremental_read_adds_cursor_params_minus_lookback() -> None:
    add_list("animals", ANIMALS)
    list(toy().read("animals", ctx(full=False, cursor="2026-11-01T10:00:00")))
    assert params_of(responses.calls[0])["modified_after"] == "2026-11-01T09:00:00"
    # A full scan ignores the cursor: it must see every record for delete detection.
    list(toy().read("animals", ctx(full=True, cursor="2026-11-01T10:00:00")))
    assert "modified_after" not in params_of(responses.calls[-1])


@responses.activate
def test_child_streams_read_each_parent_record() -> None:
    add_list("labs", [{"name": "a b"}, {"name": "c/d"}])
    add_list("labs/a%20b/animals", ANIMALS[:2])
    add_list("labs/c%2Fd/animals", ANIMALS[2:])
    pages = list(toy().read("lab_animals", ctx()))
    assert [r["id"] for p in pages for r in p] == [a["id"] for a in ANIMALS]


@responses.activate
def test_child_stream_with_a_parent_missing_the_placeholder_field() -> None:
    add_list("labs", [{"building": "x"}])
    with pytest.raises(RecordError, match="has no 'name'"):
        list(toy().read("lab_animals", ctx()))


def test_cursor_value_and_default_confirm_gone() -> None:
    connector = toy()
    assert connector.cursor_value("animals", {"modified": "2026-11-01T10:00:00"}) == (
        "2026-11-01T10:00:00"
    )
    assert connector.cursor_value("animals", {"modified": None}) is None
    assert connector.cursor_value("labs", {"name": "x"}) is None
    keys: Sequence[Key] = [("a",), ("b",)]
    assert connector.confirm_gone("labs", keys) == {("a",), ("b",)}


@responses.activate
def test_check_reports_each_stream_and_never_raises() -> None:
    responses.add(responses.GET, f"{BASE}/labs", json={"count": 1, "results": [{"name": "x"}]})
    responses.add(responses.GET, f"{BASE}/animals", json={"count": 1, "results": [{"id": "bad"}]})
    connector = toy(streams={"lab_animals": StreamSettings(enabled=False)})
    results = {r.name: r for r in connector.check()}
    assert results["settings"].ok and results["auth"].ok
    assert results["stream labs"] == CheckResult("stream labs", True, "1 record(s) read")
    assert not results["stream animals"].ok
    assert "does not validate" in results["stream animals"].detail
    assert results["stream lab_animals"].detail == "disabled"
    assert params_of(responses.calls[0])["limit"] == "1"


@responses.activate
def test_check_reports_http_failures() -> None:
    responses.add(responses.GET, f"{BASE}/labs", status=500, json={"detail": "db down"})
    responses.add(responses.GET, f"{BASE}/animals", json={"count": 0, "results": []})
    results = {r.name: r for r in toy(max_retries=0).check()}
    assert not results["stream labs"].ok and "db down" in results["stream labs"].detail
    assert results["stream animals"].ok


def test_context_manager_closes_only_its_own_session() -> None:
    given = requests.Session()
    with ToyConnector("t", ToySettings(), session=given) as connector:
        assert connector.session is given
    assert connector._session is given
    with toy() as own:
        assert isinstance(own.session, requests.Session)
    assert own._session is None


# --- the import boundary --------------------------------------------------------------------------


def test_connectors_never_import_pipeline_or_sync_statically() -> None:
    offenders = []
    for path in sorted((ROOT / "limsync" / "connectors").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith(("limsync.pipeline", "limsync.sync")) or name in (
                    "limsync.pipeline",
                    "limsync.sync",
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
            if isinstance(node, ast.ImportFrom) and node.module == "limsync":
                bad = [a.name for a in node.names if a.name in ("pipeline", "sync")]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} limsync.{b}" for b in bad]
    assert offenders == []


def test_connectors_never_import_pipeline_or_sync_at_runtime() -> None:
    # The parent package is stubbed so that limsync/__init__.py (the public API, which may well
    # import the engine) does not count against the connectors package itself.
    script = """
import importlib, json, pkgutil, sys, types
root = types.ModuleType("limsync")
root.__path__ = [ROOT]
sys.modules["limsync"] = root
import limsync.connectors
for info in pkgutil.walk_packages(limsync.connectors.__path__, "limsync.connectors."):
    importlib.import_module(info.name)
loaded = sorted(sys.modules)
print(json.dumps({
    "forbidden": [m for m in loaded if m.startswith(("limsync.pipeline", "limsync.sync"))],
    "connectors": [m for m in loaded if m.startswith("limsync.connectors.")],
}))
""".replace("ROOT", repr(str(ROOT / "limsync")))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    modules = json.loads(result.stdout)
    assert modules["forbidden"] == []
    # They were really imported (the walk did not silently find nothing).
    assert {"limsync.connectors.registry", "limsync.connectors.alyx.connector"} <= set(
        modules["connectors"]
    )
