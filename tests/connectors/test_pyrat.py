"""The PyRAT connector against the fake PyRAT: settings, auth, list grammar, child streams."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from limsync.connectors.base import ReadContext, nothing_known
from limsync.connectors.pyrat import PyratConnector, PyratSettings
from limsync.connectors.pyrat.children import fingerprint
from limsync.connectors.pyrat.query import eartag_batches
from limsync.errors import AuthenticationError, ConfigError
from limsync.testing.fake_pyrat import FakePyrat
from limsync.testing.fakeserver import Reply, Request
from limsync.testing.pyrat.colony import PyratColony


@pytest.fixture
def pyrat() -> Iterator[FakePyrat]:
    """A fake PyRAT with a small colony."""
    with FakePyrat(PyratColony.generate(seed=5, n_animals=12)) as server:
        yield server


def connector(url: str, **extra: Any) -> PyratConnector:
    """A connector for the fake server, with its tokens unless overridden."""
    data = {
        "type": "pyrat",
        "base_url": url,
        "client_token": FakePyrat.CLIENT_TOKEN,
        "user_token": FakePyrat.USER_TOKEN,
        "page_size": 5,
        **extra,
    }
    return PyratConnector("pyrat", PyratConnector.parse_settings(data, name="pyrat"))


def read_all(conn: PyratConnector, stream: str) -> list[dict[str, Any]]:
    """Every raw record of a stream, in a full read without a ledger."""
    ctx = ReadContext(full=True, cursor=None, known=nothing_known)
    return [r for page in conn.read(stream, ctx) for r in page]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://h.example/pyrat", "https://h.example/pyrat/api/v3"),
        ("https://h.example/pyrat/api/v3/", "https://h.example/pyrat/api/v3"),
        ("https://h.example", "https://h.example/api/v3"),
    ],
)
def test_base_url_with_or_without_api_root(given: str, expected: str) -> None:
    settings = PyratSettings(base_url=given, client_token="a-b", user_token="c-d")
    assert settings.base_url == expected


def test_missing_token_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="user_token"):
        PyratConnector.parse_settings(
            {"type": "pyrat", "base_url": "https://h", "client_token": "x"}
        )


def test_animals_in_every_state_keyed_by_animalid(pyrat: FakePyrat) -> None:
    records = read_all(connector(pyrat.url), "animals")
    colony = pyrat.colony
    assert sorted(r["animalid"] for r in records) == sorted(a["animalid"] for a in colony.animals)
    assert {r["state"] for r in records} >= {"live", "sacrificed"}
    tags = [r["eartag_or_id"] for r in records]
    assert tags == sorted(tags)  # sorted by eartag: animalid is not sortable
    assert len(set(tags)) < len(tags)  # a repeated eartag
    log = [r for r in pyrat.request_log if r.path == "/animals"]
    assert all("state=live&state=sacrificed&state=exported" in r.query for r in log)
    assert "licence_number" in records[0]  # British spelling on animals


def test_eartag_filters_are_batched_under_the_url_limit(pyrat: FakePyrat) -> None:
    colony = pyrat.colony
    wanted = [a["eartag_or_id"] for a in colony.animals[:6]] + [f"X-{i:05d}" for i in range(300)]
    pyrat.max_url = 1500
    conn = connector(pyrat.url, eartags=wanted, max_url_length=1500)
    records = read_all(conn, "animals")
    expected = {a["animalid"] for a in colony.animals if a["eartag_or_id"] in wanted}
    assert {r["animalid"] for r in records} == expected
    batches = [r for r in pyrat.request_log if r.path == "/animals"]
    assert len(batches) > 2 and all(r.status == 200 for r in batches)


def test_eartag_batches_keep_urls_short() -> None:
    url = "https://h.example/api/v3/animals"
    tags = [f"TAG-{i:04d}" for i in range(1000)]
    batches = eartag_batches(tags, url, {"k": ["animalid"]}, max_url=2000)
    assert [t for b in batches for t in b] == tags
    for batch in batches:
        query = "&".join(f"eartag={t}" for t in batch)
        assert len(f"{url}?k=animalid&{query}&l=1000000&o=1000000000") <= 2000
    with pytest.raises(ValueError, match="too long"):
        eartag_batches(["x" * 3000], url, {}, max_url=2000)


def test_a_url_the_server_refuses_is_a_config_error(pyrat: FakePyrat) -> None:
    pyrat.max_url = 600
    conn = connector(pyrat.url, eartags=[f"T{i}" for i in range(200)], max_url_length=5000)
    with pytest.raises(ConfigError, match="414"):
        read_all(conn, "animals")


@pytest.mark.parametrize("bad", ["client", "user"])
def test_open_names_the_wrong_token(pyrat: FakePyrat, bad: str) -> None:
    conn = connector(pyrat.url, **{f"{bad}_token": "9-nope"})
    with pytest.raises(AuthenticationError) as info:
        conn.open()
    message = str(info.value)
    assert f"{bad} token (connectors.pyrat.{bad}_token)" in message
    assert "9-nope" not in message


def test_child_bundles_hold_all_items_of_an_animal(pyrat: FakePyrat) -> None:
    colony = pyrat.colony
    bundles = read_all(connector(pyrat.url), "weights")
    by_animal = {b["animalid"]: b for b in bundles}
    for animal in colony.animals:
        tag = animal["eartag_or_id"]
        shared = sum(a["eartag_or_id"] == tag for a in colony.animals) > 1
        if shared or "/" in tag:
            assert animal["animalid"] not in by_animal  # not addressable by eartag
        else:
            assert by_animal[animal["animalid"]]["items"] == colony.weights[animal["animalid"]]
    assert all(b["checkpoint"] == "" for b in bundles)  # no ledger: no checkpoints


def test_known_unchanged_animals_are_not_fetched(pyrat: FakePyrat) -> None:
    conn = connector(pyrat.url)
    stored: set[Any] = set()

    def known(keys: Any) -> set[Any]:
        return {k for k in keys if k in stored}

    seen: list[Any] = []
    ctx = ReadContext(full=True, cursor=None, known=known, seen=seen.extend)
    first = [r for page in conn.read("comments", ctx) for r in page]
    stored.update((r["animalid"], r["checkpoint"]) for r in first)
    assert any(r["checkpoint"] for r in first)
    target = next(r["animalid"] for r in first if r["checkpoint"])
    pyrat.colony.add_comment(target, "changed")
    pyrat.reset_counters()
    second = [r for page in conn.read("comments", ctx) for r in page]
    assert {r["animalid"] for r in second} == {target}
    bundle = next(r for r in second if not r["checkpoint"])
    assert bundle["items"][-1]["content"] == "changed"
    fetched = [p for p in pyrat.requests_by_path if p.endswith("/comments")]
    assert len(fetched) == 1
    assert len(seen) >= 2 * (len({r["animalid"] for r in first}) - 1)


def test_fingerprint_follows_signal_fields() -> None:
    a = {"animalid": 1, "eartag_or_id": "A", "weight": 20.0, "date_last_comment": None}
    assert fingerprint(a) == fingerprint(dict(a))
    assert fingerprint(a) != fingerprint({**a, "weight": 21.0})
    assert fingerprint(a) == fingerprint({**a, "animalid": 2})


def test_alleles_are_distinct_mutations(pyrat: FakePyrat) -> None:
    alleles = read_all(connector(pyrat.url), "alleles")
    ids = [a["mutation_id"] for a in alleles]
    assert len(ids) == len(set(ids)) > 0
    assert all(set(a) == {"mutation_id", "mutationname"} for a in alleles)


def test_check_reports_each_stream_and_version(pyrat: FakePyrat) -> None:
    results = {r.name: r for r in connector(pyrat.url).check()}
    assert results["auth"].ok
    assert results["api version"].ok and "api_version 3" in results["api version"].detail
    for name in PyratConnector.streams:
        assert results[f"stream {name}"].ok, results[f"stream {name}"].detail


def test_confirm_gone_rescans_animals(pyrat: FakePyrat) -> None:
    conn = connector(pyrat.url)
    present = pyrat.colony.animals[0]["animalid"]
    assert conn.confirm_gone("animals", [(present,), (999_999_999,)]) == {(999_999_999,)}


class CountingPyrat(FakePyrat):
    """A fake PyRAT that counts per-animal requests in flight.

    Each one waits (up to 2 s) until ``workers`` are in flight, so a client that runs that many
    at once reaches the count whatever the machine's speed, then gives a client that runs more
    a moment (0.3 s) to send one more: the highest count is the client's concurrency.
    """

    def __init__(self, workers: int) -> None:
        super().__init__(PyratColony.generate(seed=5, n_animals=12))
        self.workers = workers
        self.now = self.most = 0
        self.cond = threading.Condition()

    def _items(self, kind: str, request: Request, eartag: str) -> Reply:
        with self.cond:
            self.now += 1
            self.most = max(self.most, self.now)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.now >= self.workers, timeout=2)
            self.cond.wait_for(lambda: self.now > self.workers, timeout=0.3)
        try:
            return super()._items(kind, request, eartag)
        finally:
            with self.cond:
                self.now -= 1


@pytest.mark.parametrize("workers", [1, 3])
def test_per_animal_requests_run_with_bounded_concurrency(workers: int) -> None:
    with CountingPyrat(workers) as server:
        bundles = read_all(connector(server.url, detail_workers=workers), "weights")
    assert len(bundles) > workers
    assert server.most == workers  # as many at once as allowed, never more
