"""A fake PyRAT REST API (v3) on 127.0.0.1 for end-to-end tests, the demo and benchmarks.

It follows the mock checklist of ``contracts/pyrat.md``: HTTP Basic auth with a client token and
a user token (401 if either is wrong; ``/credentials`` always 200 with a boolean per token;
``/version`` without auth), ``k`` projection with 400 on unknown keys, ``s`` sorting with 400 on
unsortable keys, ``l``/``o`` paging with ``X-Total-Count`` and ``X-Count``, ``state`` defaulting
to ``live`` only, 404 for an unknown eartag or a ``/`` in a path segment, 414 above
``max_url`` characters, ``licence_*`` on animals and ``license_*`` on licenses, repeated
eartags and more than two parents. Data comes from a
:class:`~limsync.testing.pyrat.colony.PyratColony` that tests change while it runs::

    with FakePyrat(PyratColony.generate(seed=1)) as pyrat:
        pyrat.colony.add_weight(pyrat.colony.animals[0]["animalid"])
        pyrat.user_token = "revoked"          # every later request answers 401
"""

from __future__ import annotations

import base64
import binascii
import hmac
from functools import partial
from typing import Any

from limsync.testing.fakeserver import FakeServer, Reply, Request
from limsync.testing.pyrat.colony import PyratColony, Record
from limsync.testing.pyrat.listing import Collection, ListError, run_query

__all__ = ["FakePyrat"]

_ANIMAL_KEYS = (
    "animalid", "pupid", "eartag_or_id", "prefix", "state", "labid", "cohort_id", "rfid",
    "origin_name", "sex", "species_name", "species_weight_unit", "sacrifice_reason_name",
    "sacrifice_comment", "sacrifice_actor_username", "sacrifice_actor_fullname",
    "datesacrificed", "cagenumber", "cagetype", "cagelabel", "cage_owner_username",
    "cage_owner_fullname", "rack_description", "room_name", "area_name", "building_name",
    "responsible_id", "responsible_fullname", "owner_userid", "owner_username",
    "owner_fullname", "age_days", "age_weeks", "dateborn", "comments", "date_last_comment",
    "generation", "gen_bg_id", "gen_bg", "strain_id", "strain_name", "strain_name_id",
    "strain_name_with_id", "mutations", "genetically_modified", "parents", "licence_title",
    "licence_id", "licence_number", "classification_id", "classification", "pregnant_days",
    "plug_date", "wean_date", "projects", "requests", "weight", "animal_color",
    "animal_user_color", "import_order_request_id",
)  # fmt: skip
_ANIMAL_SORTABLE = frozenset(
    {
        "eartag_or_id", "prefix", "labid", "cohort_id", "origin_name", "sex", "species_name",
        "datesacrificed", "cagenumber", "cagelabel", "cage_owner_username",
        "cage_owner_fullname", "rack_description", "room_name", "area_name", "building_name",
        "responsible_fullname", "owner_username", "owner_fullname", "age_days", "age_weeks",
        "dateborn", "date_last_comment", "strain_name", "strain_name_id", "strain_name_with_id",
        "licence_title", "licence_id", "licence_number", "classification_id", "classification",
        "pregnant_days", "plug_date", "wean_date", "projects", "weight",
        "import_order_request_id",
    }
)  # fmt: skip
_ANIMAL_FILTERS = {
    "state": "state", "eartag": "eartag_or_id", "labid": "labid", "sex": "sex",
    "responsible_id": "responsible_id", "licence_id": "licence_id", "strain_id": "strain_id",
}  # fmt: skip

COLLECTIONS = {
    "animals": Collection(
        keys=_ANIMAL_KEYS,
        default_keys=("animalid", "eartag_or_id", "labid", "sex", "state", "strain_name"),
        sortable=_ANIMAL_SORTABLE,
        filters=_ANIMAL_FILTERS,
        defaults={"state": ("live",)},
    ),
    "pups": Collection(
        keys=_ANIMAL_KEYS,
        default_keys=("pupid", "eartag_or_id", "sex", "dateborn"),
        sortable=_ANIMAL_SORTABLE,
        filters={"eartag": "eartag_or_id", "sex": "sex"},
    ),
    "strains": Collection(
        keys=("id", "name", "official_name", "active", "name_with_id"),
        default_keys=("id", "name"),
        sortable=frozenset({"name", "official_name", "name_with_id"}),
        filters={"id": "id", "name_with_id": "name_with_id", "status": "status"},
    ),
    "users": Collection(
        keys=("userid", "username", "fullname"),
        default_keys=("userid", "username", "fullname"),
        sortable=frozenset({"username", "fullname"}),
        filters={"fullname": "fullname", "username": "username"},
    ),
    "projects": Collection(
        keys=("id", "name", "status"),
        default_keys=("id", "name"),
        sortable=frozenset({"name", "id"}),
        filters={"status": "status", "name": "name"},
        defaults={"status": ("active",)},
    ),
    "licenses": Collection(
        keys=("license_id", "license_number"),
        default_keys=("license_id", "license_number"),
        sortable=frozenset({"license_id", "license_number"}),
        filters={"license_number": "license_number"},
    ),
}


class FakePyrat(FakeServer):
    """The fake PyRAT server. Start it with ``with FakePyrat(...) as pyrat:`` or :meth:`start`.

    ``client_token`` and ``user_token`` are the only accepted credentials and may be changed
    while it runs (to revoke a token mid-sync). ``max_url``: longer request targets answer 414
    (None: no limit). ``base_path``: the API root, ``/api/v3`` by default.
    """

    server_version = "uvicorn"
    CLIENT_TOKEN = "7-cLiEnTsEcReT"
    USER_TOKEN = "42-uSeRsEcReT"

    def __init__(
        self,
        colony: PyratColony | None = None,
        *,
        seed: int = 0,
        client_token: str = CLIENT_TOKEN,
        user_token: str = USER_TOKEN,
        max_url: int | None = 8000,
        base_path: str = "/api/v3",
    ) -> None:
        super().__init__(base_path=base_path)
        self.colony = colony if colony is not None else PyratColony.generate(seed=seed)
        self.client_token = client_token
        self.user_token = user_token
        self.max_url = max_url
        self.route("GET", "/version", self._version)
        self.route("GET", "/credentials", self._credentials)
        for name in COLLECTIONS:
            self.route("GET", f"/{name}", partial(self._list, name))
        for kind in ("weights", "comments", "procedures"):
            self.route("GET", f"/animals/{{eartag}}/{kind}", partial(self._items, kind))

    # --- errors and auth ------------------------------------------------------------------------

    def error_reply(self, status: int, detail: str) -> Reply:
        """PyRAT error bodies (FastAPI style): ``{"detail": ...}``."""
        return Reply(status, {}, {"detail": detail})

    def throttled_reply(self, retry_after: int) -> Reply:
        """The 429 answer."""
        return Reply(429, {}, {"detail": "Too many requests"})

    def not_found_reply(self, request: Request) -> Reply:
        """The answer for a path no route matches."""
        return Reply(404, {}, {"detail": "Not Found"})

    def _tokens(self, request: Request) -> tuple[str | None, str | None]:
        header = request.header("authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            client, sep, user = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return (client, user) if sep else (client, None)

    def _valid(self, request: Request) -> tuple[bool, bool]:
        client, user = self._tokens(request)
        return (
            client is not None and hmac.compare_digest(client, self.client_token),
            user is not None and hmac.compare_digest(user, self.user_token),
        )

    def _guard(self, request: Request) -> Reply | None:
        """401 for bad tokens, 414 for overlong URLs; None when the request may proceed."""
        if self.max_url is not None and len(request.raw_target) > self.max_url:
            return Reply(414, {}, {"detail": "Request-URI Too Long"})
        if not all(self._valid(request)):
            return Reply(401, {}, {"detail": "Invalid client or user token"})
        return None

    # --- handlers -------------------------------------------------------------------------------

    def _version(self, request: Request) -> Reply:
        return Reply(200, {}, {"api_version": 3, "pyrat_version": "5.6.0-fake"})

    def _credentials(self, request: Request) -> Reply:
        client_valid, user_valid = self._valid(request)
        return Reply(200, {}, {"client_valid": client_valid, "user_valid": user_valid})

    def _records(self, name: str) -> tuple[list[Record], Any]:
        colony = self.colony
        with colony.lock:
            if name == "animals":
                return list(colony.animals), colony.animal_view
            if name == "pups":
                return [dict(p) for p in colony.pups], dict
            return [dict(r) for r in getattr(colony, name)], dict

    def _list(self, name: str, request: Request) -> Reply:
        refused = self._guard(request)
        if refused is not None:
            return refused
        records, view = self._records(name)
        try:
            page, total = run_query(COLLECTIONS[name], records, request.query, view)
        except ListError as exc:
            return Reply(400, {}, {"detail": str(exc)})
        return Reply(200, {"X-Total-Count": str(total), "X-Count": str(len(page))}, page)

    def _items(self, kind: str, request: Request, eartag: str) -> Reply:
        refused = self._guard(request)
        if refused is not None:
            return refused
        if "/" in eartag:
            return self.not_found_reply(request)
        with self.colony.lock:
            ids = [a["animalid"] for a in self.colony.animals if a["eartag_or_id"] == eartag]
            if not ids:
                return Reply(404, {}, {"detail": f"animal {eartag} not found"})
            return Reply(200, {}, self.colony.items(kind, ids))
