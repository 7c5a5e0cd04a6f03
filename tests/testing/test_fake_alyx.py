"""The fake Alyx over real HTTP: auth, pagination, filters, ordering, mutations, computed fields,
faults and response shapes, checked against responses captured from a live Alyx server."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from limsync.testing import Colony, FakeAlyx

FIXTURES = Path(__file__).parent / "fixtures" / "alyx"


def fixture(name: str) -> dict[str, Any]:
    """A captured response: ``method, path, request, status, headers, body``."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def small_colony() -> Colony:
    return Colony.generate(
        seed=7, n_subjects=80, sessions_per_subject=3, weighings_per_subject=4,
        water_admins_per_subject=2,
    )  # fmt: skip


class Client:
    """A logged-in ``requests`` session on a fake server."""

    def __init__(self, server: FakeAlyx) -> None:
        self.server = server
        self.session = requests.Session()
        token = self.session.post(
            f"{server.url}/auth-token",
            data={"username": "admin", "password": "alyxadmin"},
            timeout=5,
        ).json()["token"]
        self.session.headers["Authorization"] = f"Token {token}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(f"{self.server.url}{path}", params=params or None, timeout=10)

    def json(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.json()

    def all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every result, following ``next`` URLs."""
        page = self.json(path, **params)
        results = list(page["results"])
        while page["next"]:
            response = self.session.get(page["next"], timeout=10)
            assert response.status_code == 200
            page = response.json()
            results.extend(page["results"])
        return results


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeAlyx]:
    """A server for tests that only read (never change its colony here)."""
    with FakeAlyx(small_colony()) as server:
        yield server


@pytest.fixture(scope="module")
def api(shared: FakeAlyx) -> Client:
    return Client(shared)


@pytest.fixture
def fresh() -> Iterator[FakeAlyx]:
    """A server of one's own, for tests that change the data."""
    with FakeAlyx(small_colony()) as server:
        yield server


def uuid_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


# --- auth -----------------------------------------------------------------------------------------


def test_login_with_form_or_json_returns_one_token_per_user(shared: FakeAlyx) -> None:
    url = f"{shared.url}/auth-token"
    form = requests.post(url, data={"username": "admin", "password": "alyxadmin"}, timeout=5)
    as_json = requests.post(url, json={"username": "admin", "password": "alyxadmin"}, timeout=5)
    assert form.status_code == as_json.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{40}", form.json()["token"])
    assert form.json() == as_json.json()


def test_login_errors(shared: FakeAlyx) -> None:
    url = f"{shared.url}/auth-token"
    bad = requests.post(url, data={"username": "admin", "password": "wrong"}, timeout=5)
    assert bad.status_code == 400
    assert bad.json()["non_field_errors"] == ["Unable to log in with provided credentials."]
    missing = requests.post(url, data={"username": "admin"}, timeout=5)
    assert missing.status_code == 400
    assert missing.json() == {"password": ["This field is required."], "status_code": 400}


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "Authentication credentials were not provided."),
        ("Bearer abc", "Authentication credentials were not provided."),
        ("Token", "Invalid token header. No credentials provided."),
        ("Token a b", "Invalid token header. Token string should not contain spaces."),
        ("Token " + "0" * 40, "Invalid token."),
    ],
)
def test_requests_without_a_valid_token_get_403(
    shared: FakeAlyx, header: str | None, detail: str
) -> None:
    headers = {"Authorization": header} if header else {}
    r = requests.get(f"{shared.url}/subjects", headers=headers, timeout=5)
    assert r.status_code == 403
    assert r.json() == {"detail": detail, "status_code": 403}
    assert "WWW-Authenticate" not in r.headers


def test_revoked_tokens_force_a_new_login(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    assert client.get("/labs").status_code == 200
    fresh.revoke_tokens()
    stale = client.get("/labs")
    assert stale.status_code == 403
    assert stale.json()["detail"] == "Invalid token."
    again = Client(fresh)
    assert again.get("/labs").status_code == 200
    assert again.session.headers["Authorization"] != client.session.headers["Authorization"]


def test_openapi_schema_is_served(shared: FakeAlyx) -> None:
    r = requests.get(f"{shared.url}/api/schema", timeout=10)
    assert r.status_code == 200
    schema = r.json()
    assert schema["openapi"].startswith("3.")
    assert len(schema["paths"]) == 74
    assert "django" in {p["name"] for p in schema["paths"]["/subjects"]["get"]["parameters"]}


# --- pagination -----------------------------------------------------------------------------------


def test_default_page_and_absolute_next_url(api: Client) -> None:
    page = api.json("/weighings")
    assert page["count"] == 80 * 4
    assert len(page["results"]) == 250
    assert page["next"] == f"{api.server.url}/weighings?limit=250&offset=250"
    assert page["previous"] is None


def test_limit_is_capped_and_bad_limits_fall_back_to_the_default() -> None:
    with FakeAlyx(small_colony(), page_size_default=20, max_limit=50) as server:
        client = Client(server)
        capped = client.json("/weighings", limit=5000)
        assert len(capped["results"]) == 50
        assert capped["next"] == f"{server.url}/weighings?limit=50&offset=50"
        for bad in ("0", "abc", "-3"):
            assert len(client.json("/weighings", limit=bad)["results"]) == 20


def test_offset_past_the_end_is_empty(api: Client) -> None:
    page = api.json("/subjects", limit=5, offset=500)
    assert (page["count"], page["results"], page["next"]) == (80, [], None)
    assert page["previous"] == f"{api.server.url}/subjects?limit=5&offset=495"


def test_next_and_previous_urls_sort_parameters_like_drf(api: Client) -> None:
    captured = fixture("subjects_filter_user_alive")["body"]["next"]
    assert captured.endswith("?alive=True&limit=2&offset=2&responsible_user=alice")
    page = api.json("/subjects", responsible_user="alice", alive="True", limit=2)
    assert page["next"] == (
        f"{api.server.url}/subjects?alive=True&limit=2&offset=2&responsible_user=alice"
    )
    second = api.session.get(page["next"], timeout=5).json()
    # one page back lands on offset 0, which DRF writes by dropping the parameter
    assert (
        second["previous"] == f"{api.server.url}/subjects?alive=True&limit=2&responsible_user=alice"
    )


def test_following_next_visits_every_subject_in_order(api: Client) -> None:
    everything = api.json("/subjects", limit=1000)["results"]
    paged = api.all("/subjects", limit=7)
    assert [s["id"] for s in paged] == [s["id"] for s in everything]
    keys = [(s["nickname"], s["birth_date"]) for s in paged]
    # nickname ascending, then birth_date descending
    assert keys == sorted(sorted(keys, key=lambda k: k[1], reverse=True), key=lambda k: k[0])


def test_base_path_prefixes_routes_and_urls() -> None:
    with FakeAlyx(small_colony(), base_path="/api") as server:
        assert server.url.endswith("/api")
        page = Client(server).json("/subjects", limit=1)
        assert page["next"].startswith(f"{server.url}/subjects?")
        assert page["results"][0]["url"].startswith(f"{server.url}/subjects/")


# --- ordering -------------------------------------------------------------------------------------


def test_sessions_by_start_time_descending_and_users_by_username(api: Client) -> None:
    starts = [s["start_time"] for s in api.json("/sessions", limit=1000)["results"]]
    assert starts == sorted(starts, reverse=True)
    names = [u["username"] for u in api.json("/users")["results"]]
    assert names == sorted(names)


def test_duplicate_nicknames_across_labs(api: Client) -> None:
    subjects = api.json("/subjects", limit=1000)["results"]
    by_nickname: dict[str, list[dict[str, Any]]] = {}
    for s in subjects:
        by_nickname.setdefault(s["nickname"], []).append(s)
    duplicated = [group for group in by_nickname.values() if len(group) > 1]
    assert duplicated  # the generator puts them in on purpose
    for group in duplicated:
        assert len({s["lab"] for s in group}) == len(group)
        assert len({s["responsible_user"] for s in group}) == len(group)
    nickname = duplicated[0][0]["nickname"]
    r = api.get(f"/subjects/{nickname}")
    assert r.status_code == 500
    assert r.json() == {
        "status_code": 500,
        "detail": "get() returned more than one Subject -- it returned 2!",
    }


def test_unordered_lists_hold_every_record_once_while_nothing_changes(api: Client) -> None:
    paged = [w["url"] for w in api.all("/weighings", limit=7)]
    assert len(paged) == len(set(paged)) == 80 * 4
    again = [w["url"] for w in api.json("/weighings", limit=1000)["results"]]
    assert again == paged  # stable while the data does not change
    times = [w["date_time"] for w in api.json("/weighings", limit=1000)["results"]]
    assert times != sorted(times) and times != sorted(times, reverse=True)
    admins = [a["url"] for a in api.all("/water-administrations", limit=9)]
    assert len(admins) == len(set(admins)) == 80 * 2


def test_unordered_lists_reshuffle_after_a_change(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    before = [w["url"] for w in client.json("/weighings", limit=1000)["results"]]
    subject = fresh.colony.ids("subjects")[1]
    fresh.colony.add_weighing(subject, 22.5)
    after = [w["url"] for w in client.json("/weighings", limit=1000)["results"]]
    assert set(before) < set(after)
    assert [u for u in after if u in set(before)] != before


# --- filters --------------------------------------------------------------------------------------


def test_exact_filters_match_the_unfiltered_listing(api: Client) -> None:
    everything = api.json("/subjects", limit=1000)["results"]
    for params, keep in (
        ({"lab": "otherlab"}, lambda s: s["lab"] == "otherlab"),
        ({"sex": "F"}, lambda s: s["sex"] == "F"),
        ({"alive": "False"}, lambda s: not s["alive"]),
        (
            {"responsible_user": "alice", "alive": "true"},
            lambda s: s["alive"] and s["responsible_user"] == "alice",
        ),
        (
            {"nickname": everything[3]["nickname"]},
            lambda s: s["nickname"] == everything[3]["nickname"],
        ),
    ):
        expected = [s["id"] for s in everything if keep(s)]
        found = api.json("/subjects", limit=1000, **params)
        assert expected and [s["id"] for s in found["results"]] == expected, params
        assert found["count"] == len(expected)
    one = api.json("/subjects", id=everything[5]["id"])["results"]
    assert [s["id"] for s in one] == [everything[5]["id"]]
    assert api.json("/subjects", id="00000000-0000-0000-0000-000000000000")["count"] == 0
    bad = api.get("/subjects", id="not-a-uuid")
    assert (bad.status_code, bad.json()) == (
        400,
        {"id": ["Enter a valid UUID."], "status_code": 400},
    )


def test_unknown_parameters_are_ignored(api: Client) -> None:
    assert api.json("/subjects", bogus_field=1, limit=1)["count"] == 80
    assert api.json("/subjects", django="", sex="")["count"] == 80  # empty values: no filter
    # projects have no filterset upstream: even ?django= is ignored
    total = api.json("/projects")["count"]
    assert api.json("/projects", name="proj_a", django="name,zzz")["count"] == total


def test_django_pk_in_fetches_a_batch(api: Client) -> None:
    some = api.json("/weighings", limit=5)["results"]
    ids = [uuid_of(w["url"]) for w in some[:3]]
    found = api.json("/weighings", django=f"pk__in,{ids!r}")["results"]
    assert sorted(uuid_of(w["url"]) for w in found) == sorted(ids)
    one = api.json("/sessions", django=f"pk,{api.json('/sessions', limit=1)['results'][0]['id']}")
    assert one["count"] == 1


def test_django_auto_datetime_gte_keeps_the_session_order(shared: FakeAlyx, api: Client) -> None:
    stamps = sorted(s.auto_datetime for s in shared.colony.table("session").values())
    threshold = stamps[len(stamps) // 2]
    expected = {
        s.id for s in shared.colony.table("session").values() if s.auto_datetime >= threshold
    }
    found = api.json("/sessions", django=f"auto_datetime__gte,{threshold}", limit=1000)["results"]
    assert {s["id"] for s in found} == expected
    starts = [s["start_time"] for s in found]
    assert starts == sorted(starts, reverse=True)


def test_django_related_lookups_ranges_and_exclusion(api: Client) -> None:
    weighings = api.json("/weighings", limit=1000)["results"]
    subjects = {s["nickname"]: s["lab"] for s in api.json("/subjects", limit=1000)["results"]}
    in_testlab = api.json("/weighings", django="subject__lab__name,testlab", limit=1000)
    assert {subjects[w["subject"]] for w in in_testlab["results"]} == {"testlab"}
    window = api.json(
        "/weighings", django="date_time__gte,2026-10-01,date_time__lt,2026-11-01", limit=1000
    )["results"]
    assert window and all("2026-10-01" <= w["date_time"] < "2026-11-01" for w in window)
    assert len(window) == sum("2026-10-01" <= w["date_time"] < "2026-11-01" for w in weighings)
    not_testlab = api.json("/subjects", django="~lab__name,testlab", limit=1000)["results"]
    assert not_testlab and all(s["lab"] != "testlab" for s in not_testlab)
    assert len(not_testlab) + api.json("/subjects", lab="testlab")["count"] == 80
    first = api.json("/sessions", limit=1)["results"][0]["subject"]
    by_nickname = api.json("/sessions", django=f"~subject__nickname,{first}", limit=1000)
    assert first not in {s["subject"] for s in by_nickname["results"]}


def test_bad_lookups_are_500_like_the_live_server(api: Client) -> None:
    captured = fixture("subjects_filter_django_bad")
    r = api.get("/subjects", django="nonexistent__gte,3")
    assert (r.status_code, r.json()) == (captured["status"], captured["body"])
    unknown = api.get("/sessions", django="bogus__gte,1")
    assert unknown.status_code == 500
    detail = unknown.json()["detail"]
    assert detail.startswith("Cannot resolve keyword 'bogus' into field. Choices are: ")
    assert {"auto_datetime", "start_time", "subject", "subject_id"} <= set(
        detail.split("Choices are: ")[1].split(", ")
    )
    related = api.get("/sessions", django="subject__bogus,1")
    assert (related.status_code, related.json()["detail"]) == (
        500,
        "Related Field got invalid lookup: bogus",
    )
    date_range = api.get("/weighings", date_range="2026-11-01,2026-11-03")
    assert date_range.status_code == 500
    assert "Cannot resolve keyword 'start_time'" in date_range.json()["detail"]


def test_django_values_are_never_evaluated(api: Client) -> None:
    r = api.get("/subjects", django="pk__in,[__import__('os').getpid()]")
    assert r.status_code == 500
    assert r.json()["status_code"] == 500


def test_sessions_date_range_and_subject_filters(api: Client) -> None:
    sessions = api.json("/sessions", limit=1000)["results"]
    nickname = sessions[0]["subject"]
    mine = [s for s in sessions if s["subject"] == nickname]
    assert [s["id"] for s in api.json("/sessions", subject=nickname)["results"]] == [
        s["id"] for s in mine
    ]
    day = mine[0]["start_time"][:10]
    ranged = api.json("/sessions", date_range=f"{day},{day}", limit=1000)["results"]
    assert ranged and all(s["start_time"].startswith(day) for s in ranged)


# --- details and shapes ---------------------------------------------------------------------------


def _keys(item: dict[str, Any]) -> list[str]:
    return list(item)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("subjects_list_limit5", "/subjects"),
        ("sessions_list", "/sessions"),
        ("weighings_list", "/weighings"),
        ("wateradmins_list", "/water-administrations"),
        ("water_restriction_list", "/water-restriction"),
        ("surgeries_list", "/surgeries"),
        ("labs_list", "/labs"),
        ("users_list", "/users"),
        ("projects_list", "/projects"),
        ("procedures_list", "/procedures"),
        ("watertype_list", "/water-type"),
    ],
)
def test_list_items_have_the_live_field_set(api: Client, name: str, path: str) -> None:
    captured = fixture(name)["body"]
    page = api.json(path, limit=3)
    assert list(page) == list(captured)  # count, next, previous, results
    assert _keys(page["results"][0]) == _keys(captured["results"][0])


def test_details_have_the_live_field_set(api: Client) -> None:
    subject_nickname = api.json("/subjects", limit=1)["results"][0]["nickname"]
    subject = api.json(f"/subjects/{subject_nickname}")
    assert _keys(subject) == _keys(fixture("subject_detail")["body"])
    session = api.json(f"/sessions/{api.json('/sessions', limit=1)['results'][0]['id']}")
    assert _keys(session) == _keys(fixture("session_detail")["body"])
    admin = session["wateradmin_session_related"] or [{"id": "", "name": "", "water_type": "",
                                                      "water_administered": 0}]  # fmt: skip
    assert _keys(admin[0]) == ["id", "name", "water_type", "water_administered"]
    weighing_url = api.json("/weighings", limit=1)["results"][0]["url"]
    weighing = api.session.get(weighing_url, timeout=5).json()
    assert _keys(weighing) == _keys(fixture("weighings_list")["body"]["results"][0])


def test_subject_detail_embeds_actions_and_genotype_objects(shared: FakeAlyx, api: Client) -> None:
    with_genotype = next(s for s in shared.colony.table("subject").values() if s.genotype)
    if len(shared.colony.subjects_named(with_genotype.nickname)) == 1:
        detail = api.json(f"/subjects/{with_genotype.nickname}")
        assert detail["genotype"] == [
            {"allele": a, "zygosity": z} for a, z in with_genotype.genotype
        ]
        listed = api.json("/subjects", id=with_genotype.id)["results"][0]
        assert listed["genotype"] == [f"{a} {z}" for a, z in with_genotype.genotype]
        assert len(detail["weighings"]) == 4
        times = [w["date_time"] for w in detail["weighings"]]
        assert times == sorted(times)
        assert len(detail["water_administrations"]) == 2


def test_not_found_bodies(api: Client) -> None:
    r = api.get("/subjects/NOPE")
    assert (r.status_code, r.json()) == (404, fixture("subject_detail_404")["body"])
    gone = fixture("weighing_after_delete")
    r = api.get(gone["path"])
    assert (r.status_code, r.json()) == (404, gone["body"])
    assert api.get("/sessions/not-a-uuid").status_code == 404
    unknown = api.get("/no-such-endpoint")
    assert unknown.status_code == 404
    assert unknown.headers["Content-Type"].startswith("text/html")


def test_weighings_cannot_be_patched(api: Client) -> None:
    captured = fixture("weighing_patch")
    url = api.json("/weighings", limit=1)["results"][0]["url"]
    r = api.session.patch(url, json=captured["request"], timeout=5)
    assert (r.status_code, r.json()) == (405, captured["body"])
    assert r.headers["Allow"] == captured["headers"]["Allow"]


def test_surgeries_use_uuids_for_relations(shared: FakeAlyx, api: Client) -> None:
    surgery = api.json("/surgeries", limit=1)["results"][0]
    colony = shared.colony
    assert surgery["lab"] in colony.table("lab")
    assert all(u in colony.table("user") for u in surgery["users"])
    assert all(p in colony.table("procedure") for p in surgery["procedures"])


# --- mutations ------------------------------------------------------------------------------------


def test_rename_keeps_the_id_and_records_history(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    colony = fresh.colony
    subject = next(s for s in colony.table("subject").values() if s.json is None)
    old, subject_id = subject.nickname, subject.id
    position = colony.ids("subjects").index(subject_id)
    colony.now = datetime(2026, 11, 24, 8, 31, 59, 858033)
    colony.rename_subject(subject_id, "RENAMED01")
    assert colony.ids("subject").index(subject_id) == position  # edits do not reorder
    assert colony.record("subjects", subject_id).nickname == "RENAMED01"
    listed = client.json("/subjects", id=subject_id)["results"][0]
    assert listed["nickname"] == "RENAMED01"
    assert listed["url"].endswith("/subjects/RENAMED01")
    assert listed["json"] == {
        "history": {"nickname": [{"date_time": "2026-11-24T08:31:59.858033", "value": old}]}
    }
    assert client.get(f"/subjects/{old}").status_code == 404
    assert client.json("/subjects/RENAMED01")["id"] == subject_id
    weighings = client.json("/weighings", django=f"subject,{subject_id}")["results"]
    assert weighings and {w["subject"] for w in weighings} == {"RENAMED01"}


def test_changing_the_responsible_user_records_the_old_uuid(fresh: FakeAlyx) -> None:
    colony = fresh.colony
    subject = next(s for s in colony.table("subject").values() if s.json is None)
    old_user = subject.responsible_user
    users = colony.table("user")
    new_user = next(u for u in users.values() if u.id != old_user)
    changed = colony.modify_subject(subject.id, responsible_user=new_user.username)
    assert changed["responsible_user"] == new_user.username
    assert changed["json"]["history"]["responsible_user"] == [
        {"date_time": changed["json"]["history"]["responsible_user"][0]["date_time"],
         "value": old_user}
    ]  # fmt: skip
    assert "nickname" not in changed["json"]["history"]
    with pytest.raises(ValueError, match="Nicknames must only contain"):
        colony.rename_subject(subject.id, "bad.name")


def test_delete_subject_cascades(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    colony = fresh.colony
    subject_id = colony.ids("subjects")[4]
    per_kind = {
        "/sessions": 3,
        "/weighings": 4,
        "/water-administrations": 2,
    }
    for path, n in per_kind.items():
        assert client.json(path, django=f"subject,{subject_id}")["count"] == n
    totals = {path: client.json(path)["count"] for path in per_kind}
    colony.delete_subject(subject_id)
    for path, n in per_kind.items():
        assert client.json(path, django=f"subject,{subject_id}")["count"] == 0
        assert client.json(path)["count"] == totals[path] - n
    assert client.json("/subjects", id=subject_id)["count"] == 0


def test_delete_over_http(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    url = client.json("/weighings", limit=1)["results"][0]["url"]
    assert client.session.delete(url, timeout=5).status_code == 204
    r = client.session.get(url, timeout=5)
    assert (r.status_code, r.json()) == (404, fixture("weighing_after_delete")["body"])


def test_modify_session_bumps_auto_datetime(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    colony = fresh.colony
    session_id = colony.ids("sessions")[0]
    before = client.json(f"/sessions/{session_id}")["auto_datetime"]
    newest = max(s.auto_datetime for s in colony.table("session").values())
    assert newest < "2026-11-24T08:32:01"  # generated stamps lie before the colony's clock
    colony.now = datetime(2026, 11, 24, 8, 32, 1, 72887)
    colony.modify_session(session_id, narrative="edited narrative")
    detail = client.json(f"/sessions/{session_id}")
    assert detail["narrative"] == "edited narrative"
    assert detail["auto_datetime"] == "2026-11-24T08:32:01.072887" > before
    recent = client.json("/sessions", django="auto_datetime__gte,2026-11-24T08:32:01")
    assert [s["id"] for s in recent["results"]] == [session_id]
    colony.modify_session(session_id, number=2)  # the clock moved on by itself
    assert client.json(f"/sessions/{session_id}")["auto_datetime"] == "2026-11-24T08:32:02.072887"


def test_weighings_and_water_mutations(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    colony = fresh.colony
    subject_id = colony.ids("subjects")[1]
    added = colony.add_weighing(subject_id, 24.25, date_time="2026-11-20T09:00:00", user="bob")
    fetched = client.json(f"/weighings/{added['id']}")
    assert fetched == {**{k: v for k, v in added.items() if k != "id"}, "url": fetched["url"]}
    assert fetched["weight"] == 24.25 and fetched["user"] == "bob"
    colony.delete_weighing(added["id"])
    assert client.get(f"/weighings/{added['id']}").status_code == 404

    session_id = colony.ids("sessions")[3]
    session = colony.record("session", session_id)
    admin = colony.add_water_administration(
        session.subject, 0.8, date_time=session.start_time, session=session_id
    )
    related = client.json(f"/sessions/{session_id}")["wateradmin_session_related"]
    assert {
        "id": admin["id"],
        "name": "",
        "water_type": "Water",
        "water_administered": 0.8,
    } in related
    colony.modify_water_administration(admin["id"], water_administered=1.1)
    assert client.json(f"/water-administrations/{admin['id']}")["water_administered"] == 1.1
    colony.delete_session(session_id)
    assert client.json(f"/water-administrations/{admin['id']}")["session"] is None
    colony.delete_water_administration(admin["id"])
    assert client.get(f"/water-administrations/{admin['id']}").status_code == 404


def test_water_after_death_is_refused(fresh: FakeAlyx) -> None:
    colony = fresh.colony
    dead = next(s for s in colony.table("subject").values() if s.death_date)
    with pytest.raises(ValueError, match="Water administration date after death date"):
        colony.add_water_administration(dead.id, 1.0, date_time=f"{dead.death_date}T23:00:00"
                                        .replace(dead.death_date, "2026-11-23"))  # fmt: skip


def test_non_recovery_surgery_sets_the_death_date(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    colony = fresh.colony
    subject = next(
        s
        for s in colony.table("subject").values()
        if s.death_date is None and not colony.children("waterrestriction", s.id)
    )
    colony.add_water_restriction(subject.id, "2026-11-01T09:00:00", reference_weight=24.0)
    colony.add_surgery(subject.id, "2026-11-10T10:00:00", outcome_type="n")
    listed = client.json("/subjects", id=subject.id)["results"][0]
    assert (listed["death_date"], listed["alive"]) == ("2026-11-10", False)
    restrictions = client.json("/water-restriction", django=f"subject,{subject.id}")["results"]
    assert [r["end_time"] for r in restrictions] == ["2026-11-10T00:00:00"]


# --- computed fields ------------------------------------------------------------------------------


def test_computed_fields_follow_the_day(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    colony = fresh.colony
    subjects = colony.table("subject").values()
    alive = next(s for s in subjects if s.death_date is None and not s.json)
    dead = next(s for s in subjects if s.death_date)

    def get(subject_id: str) -> dict[str, Any]:
        result: dict[str, Any] = client.json("/subjects", id=subject_id)["results"][0]
        return result

    before_alive, before_dead = get(alive.id), get(dead.id)
    colony.today = colony.today + timedelta(days=7)
    assert get(alive.id)["age_weeks"] == before_alive["age_weeks"] + 1
    assert get(dead.id)["age_weeks"] == before_dead["age_weeks"]  # frozen at death
    assert get(dead.id)["alive"] is False

    today = colony.today.isoformat()
    colony.add_weighing(alive.id, 26.0, date_time=f"{today}T08:00:00")
    implant = max(
        (x.implant_weight for x in colony.table("surgery").values() if x.subject == alive.id),
        default=0.0,
    )
    expected = 0.04 * (26.0 - implant)
    assert get(alive.id)["expected_water"] == pytest.approx(expected)
    assert get(alive.id)["remaining_water"] == pytest.approx(expected)
    colony.add_water_administration(alive.id, 0.5, date_time=f"{today}T12:00:00")
    assert get(alive.id)["remaining_water"] == pytest.approx(expected - 0.5)

    start = f"{today}T09:00:00"
    colony.add_water_restriction(alive.id, start, reference_weight=27.0)
    restricted = get(alive.id)
    assert restricted["last_water_restriction"] == start
    assert restricted["reference_weight"] == pytest.approx(27.0 - implant)
    colony.end_water_restriction(alive.id, f"{today}T10:00:00")
    assert get(alive.id)["last_water_restriction"] is None
    assert client.json("/subjects", id=alive.id, water_restricted="true")["count"] == 0


def test_the_captured_water_control_example() -> None:
    """The live server: reference 25.0 g with a 1.2 g implant -> 23.8; last weighing 23.0 g ->
    expected water 0.04 * (23.0 - 1.2) = 0.872 mL (fixture subject_detail)."""
    colony = Colony.generate(seed=1, n_subjects=2, sessions_per_subject=0,
                             weighings_per_subject=0, water_admins_per_subject=0)  # fmt: skip
    subject = colony.add_subject(nickname="WATER01", birth_date="2026-01-15", sex="M")
    colony.add_surgery(subject["id"], "2026-10-20T10:00:00", implant_weight=1.2)
    colony.add_water_restriction(subject["id"], "2026-10-27T09:00:00", reference_weight=25.0)
    for day, weight in (("01", 24.5), ("02", 23.9), ("03", 23.6), ("04", 23.3), ("05", 23.0)):
        colony.add_weighing(subject["id"], weight, date_time=f"2026-11-{day}T09:00:00")
    with FakeAlyx(colony) as server:
        listed = Client(server).json("/subjects", nickname="WATER01")["results"][0]
    captured = fixture("subject_detail")["body"]
    for name in ("reference_weight", "last_water_restriction", "expected_water", "remaining_water"):
        assert listed[name] == captured[name], name
    assert listed["age_weeks"] == 44  # alive on 2026-11-24 (the live subject died at 39 weeks)


# --- throttling, faults, counters -----------------------------------------------------------------


def test_server_side_throttle_per_user() -> None:
    with FakeAlyx(small_colony(), throttle_rate=3) as server:
        client = Client(server)  # logging in is not throttled
        assert [client.get("/labs").status_code for _ in range(3)] == [200, 200, 200]
        r = client.get("/labs")
        assert r.status_code == 429
        wait = int(r.headers["Retry-After"])
        assert 1 <= wait <= 60
        assert r.json() == {
            "detail": f"Request was throttled. Expected available in {wait} second"
            + ("s." if wait != 1 else "."),
            "status_code": 429,
        }


def test_faults_use_alyx_bodies(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    fresh.faults.set(error_burst=1, error_status=503)
    r = client.get("/subjects")
    assert (r.status_code, r.json()["status_code"]) == (503, 503)
    fresh.faults.set(throttle=1, retry_after=43)
    r = client.get("/subjects")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "43"
    assert r.json()["detail"] == "Request was throttled. Expected available in 43 seconds."
    fresh.faults.set(drop_connection=1)
    with pytest.raises(requests.ConnectionError):
        client.get("/subjects")
    assert client.get("/subjects").status_code == 200


def test_request_counters_per_endpoint(fresh: FakeAlyx) -> None:
    client = Client(fresh)
    fresh.reset_counters()
    client.all("/subjects", limit=30)
    client.get("/subjects/SUBJ001")
    assert fresh.requests == 4
    assert fresh.requests_by_route["GET /subjects"] == 3
    assert fresh.requests_by_route["GET /subjects/{nickname}"] == 1


# --- determinism ----------------------------------------------------------------------------------


def _snapshot(colony: Colony) -> dict[str, list[tuple[Any, ...]]]:
    kinds = ("lab", "user", "project", "subject", "session", "weighing", "wateradmin",
             "waterrestriction", "surgery")  # fmt: skip
    return {k: [dataclasses.astuple(r) for r in colony.table(k).values()] for k in kinds}


def test_the_same_seed_gives_the_same_colony() -> None:
    first, second = small_colony(), small_colony()
    assert _snapshot(first) == _snapshot(second)
    other = Colony.generate(seed=8, n_subjects=80, sessions_per_subject=3,
                            weighings_per_subject=4, water_admins_per_subject=2)  # fmt: skip
    assert _snapshot(other) != _snapshot(first)
    # mutations draw ids from the seeded generator too
    a = first.add_subject(nickname="NEW01")
    b = second.add_subject(nickname="NEW01")
    assert a == b


def test_the_same_seed_serves_the_same_pages() -> None:
    pages = []
    for _ in range(2):
        with FakeAlyx(seed=3) as server:
            client = Client(server)
            pages.append((client.json("/subjects", limit=20), client.json("/weighings", limit=20)))
    assert json.dumps(pages[0]).replace(pages[0][0]["next"].split("/subjects")[0], "") == (
        json.dumps(pages[1]).replace(pages[1][0]["next"].split("/subjects")[0], "")
    )


def test_generated_data_has_the_awkward_cases(shared: FakeAlyx) -> None:
    colony = shared.colony
    subjects = list(colony.table("subject").values())
    assert any(s.death_date for s in subjects)
    assert any(s.genotype for s in subjects)
    assert any(s.json and "history" in s.json for s in subjects)
    stamps = [s.auto_datetime for s in colony.table("session").values()]
    assert any("." in t for t in stamps) and any("." not in t for t in stamps)
    assert all("+" not in t and not t.endswith("Z") for t in stamps)  # naive
    restrictions = list(colony.table("waterrestriction").values())
    assert any(r.end_time is None for r in restrictions)
    assert any(r.end_time for r in restrictions)
