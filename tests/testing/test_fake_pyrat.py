"""The fake PyRAT follows the contract's mock checklist (``contracts/pyrat.md`` section 8)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from limsync.testing.fake_pyrat import FakePyrat
from limsync.testing.pyrat.colony import PyratColony

AUTH = (FakePyrat.CLIENT_TOKEN, FakePyrat.USER_TOKEN)


@pytest.fixture
def pyrat() -> Iterator[FakePyrat]:
    """A fake PyRAT with a small colony."""
    with FakePyrat(PyratColony.generate(seed=2, n_animals=10)) as server:
        yield server


def get(pyrat: FakePyrat, path: str, **params: object) -> requests.Response:
    """An authenticated GET."""
    return requests.get(f"{pyrat.url}/{path}", params=params, auth=AUTH, timeout=5)


def test_generation_is_deterministic() -> None:
    a, b = PyratColony.generate(seed=4), PyratColony.generate(seed=4)
    assert a.animals == b.animals and a.weights == b.weights
    assert PyratColony.generate(seed=5).animals != a.animals


def test_auth(pyrat: FakePyrat) -> None:
    url = pyrat.url
    assert requests.get(f"{url}/version", timeout=5).json()["api_version"] == 3
    assert requests.get(f"{url}/animals", timeout=5).status_code == 401
    wrong_user = requests.get(f"{url}/animals", auth=(AUTH[0], "x"), timeout=5)
    assert wrong_user.status_code == 401 and "detail" in wrong_user.json()
    creds = requests.get(f"{url}/credentials", auth=(AUTH[0], "x"), timeout=5)
    assert creds.status_code == 200
    assert creds.json() == {"client_valid": True, "user_valid": False}
    assert get(pyrat, "credentials").json() == {"client_valid": True, "user_valid": True}


def test_k_projection_and_rejection(pyrat: FakePyrat) -> None:
    rows = get(pyrat, "animals", k=["animalid", "licence_number"]).json()
    assert all(set(r) == {"animalid", "licence_number"} for r in rows)
    assert "eartag_or_id" in get(pyrat, "animals").json()[0]  # the default set
    assert get(pyrat, "animals", k=["animalid", "nope"]).status_code == 400
    assert get(pyrat, "licenses", k=["licence_id"]).status_code == 400  # US spelling there


def test_sorting(pyrat: FakePyrat) -> None:
    rows = get(pyrat, "animals", k=["eartag_or_id"], s="eartag_or_id:desc").json()
    tags = [r["eartag_or_id"] for r in rows]
    assert tags == sorted(tags, reverse=True)
    assert get(pyrat, "animals", s="animalid:asc").status_code == 400
    assert get(pyrat, "animals", s="eartag_or_id:up").status_code == 400


def test_several_sort_keys_the_first_wins(pyrat: FakePyrat) -> None:
    states = ["live", "sacrificed", "exported"]
    rows = get(
        pyrat, "animals", k=["sex", "eartag_or_id"], state=states,
        s=["sex:desc", "eartag_or_id:asc"],
    ).json()  # fmt: skip
    pairs = [(r["sex"], r["eartag_or_id"]) for r in rows]
    by_sex = sorted(pairs, key=lambda p: p[1])
    assert pairs == sorted(by_sex, key=lambda p: p[0], reverse=True)
    assert len({sex for sex, _ in pairs}) > 1


def test_repeated_values_are_or_ed_and_filters_and_ed(pyrat: FakePyrat) -> None:
    colony = pyrat.colony
    states = ["live", "sacrificed", "exported"]
    tags = [colony.animals[1]["eartag_or_id"], colony.animals[2]["eartag_or_id"]]
    either = get(pyrat, "animals", k=["animalid"], state=states, eartag=tags).json()
    expected = {a["animalid"] for a in colony.animals if a["eartag_or_id"] in tags}
    assert {r["animalid"] for r in either} == expected and len(expected) >= 2
    sex = colony.animals[1]["sex"]
    both = get(pyrat, "animals", k=["animalid", "sex"], state=states, eartag=tags, sex=sex)
    assert {r["animalid"] for r in both.json()} == {
        a["animalid"] for a in colony.animals if a["eartag_or_id"] in tags and a["sex"] == sex
    }
    assert all(r["sex"] == sex for r in both.json())


def test_state_default_and_filters(pyrat: FakePyrat) -> None:
    colony = pyrat.colony
    live = get(pyrat, "animals", k=["state"]).json()
    assert {r["state"] for r in live} == {"live"}
    every = get(pyrat, "animals", k=["state"], state=["live", "sacrificed", "exported"])
    assert len(every.json()) == len(colony.animals)
    tag = colony.animals[1]["eartag_or_id"]
    found = get(pyrat, "animals", k=["eartag_or_id"], eartag=tag[:4] + "*", state="sacrificed")
    assert all(r["eartag_or_id"].startswith(tag[:4]) for r in found.json())
    assert get(pyrat, "animals", bogus="1").status_code == 200  # unknown params ignored


def test_paging_headers(pyrat: FakePyrat) -> None:
    states = ["live", "sacrificed", "exported"]
    page = get(pyrat, "animals", k=["animalid"], state=states, l=3, o=2, s="eartag_or_id:asc")
    assert page.headers["X-Total-Count"] == str(len(pyrat.colony.animals))
    assert page.headers["X-Count"] == "3" and len(page.json()) == 3
    assert get(pyrat, "animals", l="x").status_code == 400


def test_sub_resources_and_404s(pyrat: FakePyrat) -> None:
    colony = pyrat.colony
    animal = colony.animals[1]
    weights = get(pyrat, f"animals/{animal['eartag_or_id']}/weights").json()
    assert weights == colony.weights[animal["animalid"]]
    assert get(pyrat, "animals/NO-SUCH/comments").status_code == 404
    assert get(pyrat, "animals/ROS%2F17/procedures").status_code == 404


def test_414_on_overlong_urls(pyrat: FakePyrat) -> None:
    pyrat.max_url = 300
    assert get(pyrat, "animals", eartag=[f"T{i}" for i in range(100)]).status_code == 414


def test_add_modify_delete(pyrat: FakePyrat) -> None:
    colony = pyrat.colony
    new = colony.add_animal(eartag_or_id="NEW-1", weights=1)
    assert get(pyrat, "animals/NEW-1/weights").json() == colony.weights[new["animalid"]]
    colony.modify_animal(new["animalid"], labid="L9")
    rows = get(pyrat, "animals", k=["animalid", "labid"], eartag="NEW-1").json()
    assert rows == [{"animalid": new["animalid"], "labid": "L9"}]
    colony.delete_animal(new["animalid"])
    assert get(pyrat, "animals", eartag="NEW-1").json() == []
    assert get(pyrat, "animals/NEW-1/weights").status_code == 404


def test_colony_traps() -> None:
    colony = PyratColony.generate(seed=1)
    tags = [a["eartag_or_id"] for a in colony.animals]
    assert len(set(tags)) < len(tags)
    assert any("/" in t for t in tags)
    assert max(len(a["parents"]) for a in colony.animals) > 2
