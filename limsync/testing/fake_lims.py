"""A fake "plain JSON" LIMS on 127.0.0.1, for the declarative REST connector's tests and docs.

It is the kind of API ``type = "rest"`` is for (``docs/rest.md`` syncs it end to end)::

    POST /api/auth/login               {"username", "password"} -> {"token": ..., "expires_in"}
    GET  /api/strains                  ?limit=&offset= -> {"count", "next", "previous", "results"}
    GET  /api/animals                  the same paging; ?modified_after=<ISO> keeps modified >= it
    GET  /api/animals/{id}/weights     a bare JSON array, unpaged; records without the animal id

Every GET needs ``Authorization: Token <token>`` from the login; :meth:`FakeLims.expire_tokens`
makes the server refuse the current token (401), as a real session timeout does. Animals carry a
nested ``strain`` object, a ``modified`` time (UTC, ``Z``) that :meth:`FakeLims.modify_animal`
moves forward, and a computed ``age_days`` that :meth:`FakeLims.age` changes without an edit.
Built on :class:`~limsync.testing.toolkit.RecordServer`, so the request log, counters and
:class:`~limsync.testing.fakeserver.Faults` work as for every fake.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from limsync.testing.fakeserver import Reply, Request
from limsync.testing.toolkit import OffsetPaging, Paging, Record, RecordServer

__all__ = ["FakeLims"]

ANIMALS = "animals"
STRAINS = "strains"
WEIGHTS = "animals/{animal_id}/weights"
_TODAY = dt.date(2026, 2, 1)
_STRAIN_NAMES = ("C57BL/6J", "Ai14", "PV-Cre")


@dataclass(frozen=True)
class _BareList(Paging):
    """An unpaged listing: every matching record in a JSON array, without ``hidden`` fields."""

    hidden: tuple[str, ...] = ()

    def reply(self, request: Request, records: Sequence[Record]) -> Reply:
        """All records, each without the hidden fields."""
        body = [{k: v for k, v in r.items() if k not in self.hidden} for r in records]
        return Reply(200, {}, body)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeLims(RecordServer):
    """The fake LIMS (see the module docstring); ``n_animals`` animals (at most 28) with
    ``weights_per_animal`` weighings each, on ``len(_STRAIN_NAMES)`` strains."""

    USERNAME = "sync"
    PASSWORD = "fake-lims-password"

    def __init__(self, n_animals: int = 8, weights_per_animal: int = 3) -> None:
        if not 0 < n_animals <= 28:
            raise ValueError("n_animals must be between 1 and 28")
        # No one knows the first token: every GET needs a login.
        super().__init__(token=secrets.token_hex(16), auth_scheme="Token", base_path="/api")
        self.logins = 0
        self._clock = dt.datetime(2026, 1, 31, 12, 0, tzinfo=dt.UTC)
        strains = [
            {"id": i + 1, "name": name, "official_name": f"{name} (official)"}
            for i, name in enumerate(_STRAIN_NAMES)
        ]
        animals = [self._animal(i) for i in range(1, n_animals + 1)]
        weights = [
            self._weight(a["id"], j) for a in animals for j in range(1, weights_per_animal + 1)
        ]
        self.serve(STRAINS, strains, paging=OffsetPaging())
        self.serve(ANIMALS, animals, paging=OffsetPaging(), since=("modified_after", "modified"))
        self.serve(WEIGHTS, weights, paging=_BareList(hidden=("animal_id",)))
        self.route("POST", "/auth/login", self._login)

    # --- data ------------------------------------------------------------------------------------

    @staticmethod
    def _animal(i: int) -> Record:
        born = dt.date(2025, 1, 1) + dt.timedelta(days=7 * i)
        strain = 1 + i % len(_STRAIN_NAMES)
        return {
            "id": i,
            "eartag": f"A-{i:04d}",
            "sex": "f" if i % 2 else "m",
            "birth_date": born.isoformat(),
            "status": "alive",
            "strain": {"id": strain, "name": _STRAIN_NAMES[strain - 1]},
            "death_date": None,
            "death_reason": None,
            "modified": f"2026-01-{i:02d}T09:00:00Z",
            "age_days": (_TODAY - born).days,
        }

    @staticmethod
    def _weight(animal_id: int, j: int) -> Record:
        return {
            "id": animal_id * 100 + j,
            "animal_id": animal_id,
            "date": f"2026-01-{j:02d}T08:30:00",
            "weight_g": round(20 + animal_id * 0.5 + j * 0.1, 1),
        }

    def _tick(self) -> str:
        self._clock += dt.timedelta(minutes=1)
        return _stamp(self._clock)

    def add_animal(self, **fields: Any) -> Record:
        """Add an animal (the next id unless given); ``modified`` is now."""
        ids = [r["id"] for r in self.records(ANIMALS)]
        record = {**self._animal(max(ids, default=0) + 1), **fields, "modified": self._tick()}
        self.add(ANIMALS, record)
        return record

    def modify_animal(self, animal_id: int, **changes: Any) -> Record:
        """Change an animal; its ``modified`` moves forward, as the LIMS does on every edit."""
        return self.update(ANIMALS, animal_id, **changes, modified=self._tick())

    def remove_animal(self, animal_id: int) -> None:
        """Delete an animal and its weighings."""
        self.remove(ANIMALS, animal_id)
        for weight in self.records(WEIGHTS):
            if weight["animal_id"] == animal_id:
                self.remove(WEIGHTS, weight["id"])

    def add_weight(self, animal_id: int, **fields: Any) -> Record:
        """Add a weighing of an animal (the next id unless given)."""
        mine = [w["id"] for w in self.records(WEIGHTS) if w["animal_id"] == animal_id]
        j = len(mine) + 1
        record = {**self._weight(animal_id, j), **fields}
        self.add(WEIGHTS, record)
        return record

    def age(self, days: int = 1) -> None:
        """Let time pass: every ``age_days`` grows, and nothing else (no ``modified`` change)."""
        for animal in self.records(ANIMALS):
            self.update(ANIMALS, animal["id"], age_days=animal["age_days"] + days)

    # --- auth ------------------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Refuse the token handed out so far (401) until the client logs in again."""
        self.token = secrets.token_hex(16)

    def _login(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return Reply(400, {}, {"detail": "JSON body expected."})
        if not isinstance(body, dict):
            return Reply(400, {}, {"detail": "JSON object expected."})
        if body.get("username") != self.USERNAME or body.get("password") != self.PASSWORD:
            return Reply(401, {}, {"detail": "Invalid username or password."})
        self.logins += 1
        self.token = secrets.token_hex(16)
        return Reply(200, {}, {"token": self.token, "expires_in": 3600})
