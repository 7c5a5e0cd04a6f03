"""The contract suite itself: a good connector passes every check, and for each check a
deliberately broken connector fails exactly that check and passes all the others."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import requests
from pydantic import BaseModel, ConfigDict, SecretStr

from limsync.connectors import (
    BearerAuth,
    Connector,
    ConnectorSettings,
    Cursor,
    Key,
    LimitOffset,
    Page,
    PageNumber,
    Paginator,
    Record,
    Stream,
    Streams,
    raise_for_response,
)
from limsync.connectors.pagination import Fetch
from limsync.errors import HTTPStatusError, PaginationError
from limsync.testing.contract import ConnectorContract, ContractError
from limsync.testing.toolkit import OffsetPaging, PageNumberPaging, RecordServer

TOKEN = "toy-token-1234"


# --- a small, correct connector and its fake server ---------------------------------------------


class ToySettings(ConnectorSettings):
    type: Literal["toylims"] = "toylims"
    base_url: str
    token: SecretStr


class Project(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    lead: str


class Sample(BaseModel):
    project: str
    number: int
    name: str
    modified: datetime


class ToyConnector(Connector):
    type_name = "toylims"
    settings_model = ToySettings
    paginator = LimitOffset(page_size=50)
    streams = Streams(
        Stream("projects", "projects", Project, key=("name",), paginator=PageNumber(page_size=50)),
        Stream("samples", "samples", Sample, key=("project", "number"), cursor=Cursor("modified")),
    )

    def open(self) -> None:
        assert isinstance(self.settings, ToySettings)
        self.session.auth = BearerAuth(self.settings.token)
        super().open()

    def cursor_params(self, stream: str, since: datetime) -> Mapping[str, str]:
        return {"modified_since": since.isoformat()}


def toy_server() -> RecordServer:
    server = RecordServer(token=TOKEN)
    server.serve(
        "projects",
        [
            {"name": n, "lead": lead}
            for n, lead in (("alpha", "ana"), ("beta", "bo"), ("gamma", "cy"))
        ],
        paging=PageNumberPaging(),
        key="name",
    )
    server.serve(
        "samples",
        [
            {
                "project": "alpha" if i % 2 else "beta",
                "number": i,
                "name": f"S{i}",
                "modified": f"2026-01-{i + 1:02d}T10:00:00",
            }
            for i in range(7)
        ],
        paging=OffsetPaging(),
        key=("project", "number"),
        since=("modified_since", "modified"),
    )
    return server


class ToyContract(ConnectorContract):
    connector_class: ClassVar[type[Connector]] = ToyConnector
    settings = {"type": "toylims", "token": TOKEN}
    server_factory = toy_server


# --- broken variants, one bug each --------------------------------------------------------------


class AcceptsEmptySettings(ToySettings):
    base_url: str = "http://127.0.0.1:9"
    token: SecretStr = SecretStr(TOKEN)


class EmptySettingsConnector(ToyConnector):
    settings_model = AcceptsEmptySettings


class IgnoresUnknownSettings(ToySettings):
    model_config = ConfigDict(extra="ignore")


class UnknownSettingsConnector(ToyConnector):
    settings_model = IgnoresUnknownSettings


class SampleWithDefaultKey(Sample):
    number: int = 0


class KeyWithDefaultConnector(ToyConnector):
    streams = Streams(
        ToyConnector.streams["projects"],
        Stream(
            "samples", "samples", SampleWithDefaultKey, key=("project", "number"),
            cursor=Cursor("modified"),
        ),
    )  # fmt: skip


class InvalidRecordConnector(ToyConnector):
    def prepare_record(self, stream: str, record: Record) -> Record:
        if stream == "samples" and record["number"] == 0:
            return {**record, "name": ["not", "a", "name"]}
        return record


class DuplicateKeyConnector(ToyConnector):
    def prepare_record(self, stream: str, record: Record) -> Record:
        # "beta" read as "alpha": two records share a key
        return {**record, "name": "alpha"} if record.get("name") == "beta" else record


class SampleWithNullableKey(Sample):
    number: int | None


class NullKeyConnector(ToyConnector):
    streams = Streams(
        ToyConnector.streams["projects"],
        Stream(
            "samples", "samples", SampleWithNullableKey, key=("project", "number"),
            cursor=Cursor("modified"),
        ),
    )  # fmt: skip

    def prepare_record(self, stream: str, record: Record) -> Record:
        return {**record, "number": None} if record.get("number") == 1 else record


class _OffsetWithoutGuard(Paginator):
    """Limit/offset paging that stops only on an empty page: loops if pages repeat."""

    def __init__(self, skip: int = 0, guard: bool = False) -> None:
        super().__init__(50)
        self.skip = skip
        self.guard = guard

    def pages(
        self,
        fetch: Fetch,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int | None = None,
    ) -> Iterator[Page]:
        size = self.page_size_for(page_size)
        offset = 0
        last: Page | None = None
        while True:
            response = fetch(url, params={**(params or {}), "limit": size, "offset": offset})
            raise_for_response(response)
            records: Page = response.json()["results"]
            if not records:
                return
            if self.guard and records == last:
                raise PaginationError("the same page twice")
            last = records
            yield records
            offset += len(records) + self.skip


class LoopingPaginatorConnector(ToyConnector):
    paginator = _OffsetWithoutGuard()


class SkippingPaginatorConnector(ToyConnector):
    paginator = _OffsetWithoutGuard(skip=1, guard=True)  # an off-by-one: loses records


class NoRetryConnector(ToyConnector):
    def get(self, url: str, params: Mapping[str, Any] | None = None) -> requests.Response:
        # A plain requests.get: no session, so no retries on 429/5xx.
        headers = {"Authorization": f"Bearer {TOKEN}"}
        response = requests.get(url, params=dict(params or {}), headers=headers, timeout=10)
        raise_for_response(response)
        return response


class RetriesClientErrorsConnector(ToyConnector):
    def get(self, url: str, params: Mapping[str, Any] | None = None) -> requests.Response:
        try:
            return super().get(url, params)
        except HTTPStatusError as exc:
            if exc.status == 404:
                return super().get(url, params)  # "maybe it was a glitch"
            raise


class ConstantCursorConnector(ToyConnector):
    def cursor_value(self, stream: str, record: Record) -> str | None:
        return "2000-01-01T00:00:00"  # never advances


class StrictCursorConnector(ToyConnector):
    def cursor_params(self, stream: str, since: datetime) -> Mapping[str, str]:
        # "after the cursor": loses records changed in the same second as the last one read
        return {"modified_since": (since + timedelta(seconds=1)).isoformat()}


class ProjectWithFetchTime(Project):
    fetched_at: str


class ChangingHashConnector(ToyConnector):
    streams = Streams(
        Stream(
            "projects", "projects", ProjectWithFetchTime, key=("name",),
            paginator=PageNumber(page_size=50),
        ),
        ToyConnector.streams["samples"],
    )  # fmt: skip

    def prepare_record(self, stream: str, record: Record) -> Record:
        if stream == "projects":
            return {**record, "fetched_at": datetime.now().isoformat()}  # not volatile
        return record


class BlindToDeletesConnector(ToyConnector):
    def confirm_gone(self, stream: str, keys: list[Key]) -> set[Key]:  # type: ignore[override]
        return set()


CHECKS = sorted(n for n, _ in inspect.getmembers(ConnectorContract) if n.startswith("test_"))

BROKEN: list[tuple[type[Connector], str]] = [
    (EmptySettingsConnector, "test_settings_reject_empty"),
    (UnknownSettingsConnector, "test_settings_reject_wrong"),
    (KeyWithDefaultConnector, "test_streams_declare_valid_keys"),
    (InvalidRecordConnector, "test_streams_yield_valid_records"),
    (DuplicateKeyConnector, "test_keys_unique_and_non_null"),
    (NullKeyConnector, "test_keys_unique_and_non_null"),
    (SkippingPaginatorConnector, "test_pagination_terminates"),
    (LoopingPaginatorConnector, "test_pagination_detects_loops"),
    (NoRetryConnector, "test_retries_throttling_and_server_errors"),
    (RetriesClientErrorsConnector, "test_does_not_retry_client_errors"),
    (ConstantCursorConnector, "test_cursor_advances"),
    (StrictCursorConnector, "test_cursor_round_trip"),
    (ChangingHashConnector, "test_second_sync_writes_nothing"),
    (BlindToDeletesConnector, "test_deleted_record_is_detected"),
]


#: Checks that change the fake server's data get a server of their own; the others share one.
CHANGES_DATA = {"test_cursor_advances", "test_deleted_record_is_detected"}


def run_checks(contract: ConnectorContract, tmp_path: Path) -> dict[str, str | None]:
    """Each check's outcome: None when it passed, else the failure message."""
    outcome: dict[str, str | None] = {}
    with contract.serve() as shared:
        for i, name in enumerate(CHECKS):
            method = getattr(contract, name)
            workdir = tmp_path / f"{i}"
            workdir.mkdir()
            with contextlib.ExitStack() as stack:
                server = stack.enter_context(contract.serve()) if name in CHANGES_DATA else shared
                args: dict[str, Any] = {"contract_server": server}
                if "tmp_path" in inspect.signature(method).parameters:
                    args["tmp_path"] = workdir
                try:
                    method(**args)
                except ContractError as exc:
                    outcome[name] = str(exc)
                else:
                    outcome[name] = None
    return outcome


def contract_for(connector: type[Connector]) -> ConnectorContract:
    cls = type(f"{connector.__name__}Contract", (ToyContract,), {"connector_class": connector})
    contract = cls()
    assert isinstance(contract, ConnectorContract)
    return contract


def test_every_check_has_a_broken_connector() -> None:
    assert sorted({target for _, target in BROKEN}) == CHECKS


def test_the_good_connector_passes_every_check(tmp_path: Path) -> None:
    outcome = run_checks(contract_for(ToyConnector), tmp_path)
    assert {k: v for k, v in outcome.items() if v is not None} == {}


@pytest.mark.parametrize(("connector", "target"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_each_broken_connector_fails_exactly_its_check(
    connector: type[Connector], target: str, tmp_path: Path
) -> None:
    outcome = run_checks(contract_for(connector), tmp_path)
    failed = sorted(name for name, message in outcome.items() if message is not None)
    assert failed == [target], {name: outcome[name] for name in failed}


def test_a_failure_names_the_stream_and_the_fix(tmp_path: Path) -> None:
    outcome = run_checks(contract_for(ChangingHashConnector), tmp_path)
    message = outcome["test_second_sync_writes_nothing"]
    assert message is not None
    assert "'projects'" in message and "volatile" in message


class TestToyContractThroughPytest(ToyContract):
    """The same suite collected by pytest as an author's file would be (fixtures included)."""
