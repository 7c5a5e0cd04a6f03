"""The fake Alyx's data: a deterministic, thread-safe colony with Alyx's mutation semantics.

Mutations behave like Alyx's models: renames write ``json.history``, a death date closes open
water restrictions, a non-recovery surgery sets the death date, deleting a subject cascades to
its actions, editing a session bumps its ``auto_datetime`` from the colony's settable clock.
Every mutation returns the record as the API lists it (plus its ``id``, without ``url``).
"""

from __future__ import annotations

import copy
import gc
import re
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import date, datetime
from typing import Any

from limsync.testing.alyx.generate import populate
from limsync.testing.alyx.models import (
    SUBJECT_CHILDREN,
    Session,
    Subject,
    Surgery,
    WaterAdministration,
    WaterRestriction,
    Weighing,
    canon_date,
    canon_datetime,
)
from limsync.testing.alyx.render import Renderer
from limsync.testing.alyx.store import DEFAULT_TODAY, Store, new_id

__all__ = ["Colony"]

_NICKNAME = re.compile(r"^[\w-]+$")


class Colony(Store):
    """In-memory Alyx data, deterministic from a seed, safe to read and change from any thread.

    Build one with :meth:`generate`; read it with :meth:`count`, :meth:`ids`, :meth:`record`;
    change it with the ``add_*``, ``modify_*`` and ``delete_*`` methods. Generated activity
    ends the day before ``today``, so ``now`` (09:00 on ``today`` by default) is later than
    every generated timestamp.
    """

    @classmethod
    def generate(
        cls,
        seed: int = 0,
        n_labs: int = 2,
        n_users: int = 4,
        n_projects: int = 2,
        n_subjects: int = 50,
        sessions_per_subject: int = 5,
        weighings_per_subject: int = 10,
        water_admins_per_subject: int = 3,
        *,
        today: date = DEFAULT_TODAY,
        now: datetime | None = None,
    ) -> Colony:
        """A colony generated from ``seed``: the same arguments always give the same data.

        Among the subjects, by position: every 25th reuses the previous nickname in another lab,
        every 9th is dead, every 4th has a water restriction, every 3rd a surgery, every 5th a
        genotype and every 20th a ``json.history`` from an earlier rename.
        Generation takes about 2 s for 20,000 subjects with the default per-subject counts.
        """
        colony = cls(seed=seed, today=today, now=now)
        collecting = gc.isenabled()
        gc.disable()  # hundreds of thousands of new objects, no cycles: skip the GC passes
        try:
            populate(
                colony,
                n_labs=n_labs,
                n_users=n_users,
                n_projects=n_projects,
                n_subjects=n_subjects,
                sessions_per_subject=sessions_per_subject,
                weighings_per_subject=weighings_per_subject,
                water_admins_per_subject=water_admins_per_subject,
            )
        finally:
            if collecting:
                gc.enable()
        return colony

    # --- resolving names given to the mutation API ------------------------------------------------

    def _subject(self, ref: str) -> Subject:
        """A subject by id, or by nickname when that nickname is unique."""
        table = self._tables["subject"]
        if ref in table:
            subject: Subject = table[ref]
            return subject
        found = self.subjects_named(ref)
        if len(found) != 1:
            raise ValueError(f"{len(found)} subjects are named {ref!r}; pass the subject id")
        return found[0]

    def _get(self, kind: str, record_id: str) -> Any:
        try:
            return self._tables[kind][record_id]
        except KeyError:
            raise KeyError(f"no {kind} with id {record_id!r}") from None

    def _ids(self, kind: str, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.id_of(kind, n) for n in names)

    def _opt_id(self, kind: str, name: str | None) -> str | None:
        return None if name is None else self.id_of(kind, name)

    def _describe(self, kind: str, record: Any) -> dict[str, Any]:
        return Renderer(self, None).describe(kind, record)

    # --- subjects ---------------------------------------------------------------------------------

    _SUBJECT_FIELDS = frozenset(f.name for f in fields(Subject)) - {"id"}

    def _subject_values(self, given: dict[str, Any]) -> dict[str, Any]:
        """Mutation-API values (names, dates) -> stored values (ids, canonical strings)."""
        unknown = set(given) - self._SUBJECT_FIELDS
        if unknown:
            raise TypeError(f"unknown subject field(s): {', '.join(sorted(unknown))}")
        values = dict(given)
        if "lab" in values:
            values["lab"] = self.id_of("lab", values["lab"])
        if "responsible_user" in values:
            values["responsible_user"] = self.id_of("user", values["responsible_user"])
        if "projects" in values:
            values["projects"] = self._ids("project", values["projects"])
        for name in ("birth_date", "death_date"):
            if values.get(name) is not None:
                values[name] = canon_date(values[name])
        if "genotype" in values:
            values["genotype"] = tuple((a, z) for a, z in values["genotype"])
        return values

    def _check_unique(self, nickname: str, lab: str, user: str, own_id: str | None) -> None:
        if not _NICKNAME.match(nickname):
            raise ValueError(
                "Nicknames must only contain letters, numbers, hyphens and underscores."
            )
        for other in self.subjects_named(nickname):
            if other.id != own_id and (other.lab == lab or other.responsible_user == user):
                raise ValueError(
                    f"a subject named {nickname!r} exists in that lab or for that user"
                )

    def add_subject(self, **fields: Any) -> dict[str, Any]:
        """Create a subject; ``nickname`` is required, ``lab``/``responsible_user`` are names
        (default: the first lab and user). Returns it as the API lists it, without ``url``."""
        with self.lock:
            record_id = fields.pop("id", None) or new_id(self.rng)
            values = self._subject_values(fields)
            if "nickname" not in values:
                raise TypeError("add_subject() needs a nickname")
            values.setdefault("lab", next(iter(self._tables["lab"])))
            values.setdefault("responsible_user", next(iter(self._tables["user"])))
            self._check_unique(values["nickname"], values["lab"], values["responsible_user"], None)
            subject = Subject(id=record_id, **values)
            self.insert("subject", subject)
            self._changed()
            return self._describe("subject", subject)

    def modify_subject(self, subject_id: str, **changes: Any) -> dict[str, Any]:
        """Change a subject like a PATCH does, recording old ``nickname`` and
        ``responsible_user`` (its UUID) in ``json.history``; a new death date closes open
        water restrictions."""
        with self.lock:
            subject = self._get("subject", subject_id)
            values = self._subject_values(changes)
            nickname = values.get("nickname", subject.nickname)
            lab = values.get("lab", subject.lab)
            user = values.get("responsible_user", subject.responsible_user)
            self._check_unique(nickname, lab, user, subject.id)
            history_of = [
                n
                for n in ("nickname", "responsible_user")
                if n in values and values[n] != getattr(subject, n)
            ]
            if history_of:
                stamp = self.tick()
                # a new dict: a response being encoded may still hold the old one
                data = copy.deepcopy(subject.json) if isinstance(subject.json, dict) else {}
                history = data.setdefault("history", {})
                for name in history_of:
                    old = getattr(subject, name)
                    history.setdefault(name, []).append({"date_time": stamp, "value": old})
                values["json"] = data
            self._reindexed("subject", subject, values)
            if values.get("death_date"):
                self._close_restrictions(subject)
            self._changed()
            return self._describe("subject", subject)

    def rename_subject(self, subject_id: str, new_nickname: str) -> dict[str, Any]:
        """Rename a subject; its id stays and the old nickname goes into ``json.history``."""
        return self.modify_subject(subject_id, nickname=new_nickname)

    def delete_subject(self, subject_id: str) -> None:
        """Delete a subject and, like Alyx's cascade, its sessions, weighings, water
        administrations, water restrictions and surgeries."""
        with self.lock:
            self._get("subject", subject_id)
            for kind in SUBJECT_CHILDREN:
                for child_id in list(self._children[kind].get(subject_id, ())):
                    if kind == "session":
                        self._detach_session(child_id)
                    self._remove(kind, child_id)
            self._remove("subject", subject_id)
            self._changed()

    def _close_restrictions(self, subject: Subject) -> None:
        for restriction in self.children("waterrestriction", subject.id):
            if restriction.end_time is None:
                restriction.end_time = f"{subject.death_date}T00:00:00"

    # --- sessions ---------------------------------------------------------------------------------

    _SESSION_FIELDS = frozenset(f.name for f in fields(Session)) - {"id", "subject"}

    def _session_values(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = set(given) - self._SESSION_FIELDS
        if unknown:
            raise TypeError(f"unknown session field(s): {', '.join(sorted(unknown))}")
        values = dict(given)
        for name, kind in (("users", "user"), ("projects", "project"), ("procedures", "procedure")):
            if name in values:
                values[name] = self._ids(kind, values[name])
        for name, kind in (("lab", "lab"), ("location", "location")):
            if name in values:
                values[name] = self._opt_id(kind, values[name])
        for name in ("start_time", "end_time", "auto_datetime"):
            if values.get(name) is not None:
                values[name] = canon_datetime(values[name])
        if values.get("parent_session") is not None:
            self._get("session", values["parent_session"])
        return values

    def add_session(self, subject: str, **fields: Any) -> dict[str, Any]:
        """Create a session for ``subject`` (id, or unique nickname). Defaults as ``POST
        /sessions``: the subject's lab, its responsible user, number 1, ``start_time`` now."""
        with self.lock:
            owner = self._subject(subject)
            values = self._session_values(fields)
            values.setdefault("lab", owner.lab)
            values.setdefault("users", (owner.responsible_user,))
            stamp = self.tick()
            values.setdefault("start_time", stamp)
            values.setdefault("auto_datetime", stamp)
            session = Session(id=new_id(self.rng), subject=owner.id, **values)
            self.insert("session", session)
            self._changed()
            return self._describe("session", session)

    def modify_session(self, session_id: str, **changes: Any) -> dict[str, Any]:
        """Change a session; like Django's ``auto_now`` this bumps ``auto_datetime``."""
        with self.lock:
            session = self._get("session", session_id)
            values = self._session_values(changes)
            values["auto_datetime"] = self.tick()
            self._reindexed("session", session, values)
            self._changed()
            return self._describe("session", session)

    def delete_session(self, session_id: str) -> None:
        """Delete a session; water administrations and child sessions keep existing with their
        link set to null (``on_delete=SET_NULL``)."""
        with self.lock:
            self._get("session", session_id)
            self._detach_session(session_id)
            self._remove("session", session_id)
            self._changed()

    def _detach_session(self, session_id: str) -> None:
        admins = self._tables["wateradmin"]
        for admin_id in list(self._session_admins.pop(session_id, ())):
            admins[admin_id].session = None
        for session in self._tables["session"].values():
            if session.parent_session == session_id:
                session.parent_session = None

    # --- weighings --------------------------------------------------------------------------------

    def add_weighing(
        self,
        subject: str,
        weight: float,
        *,
        date_time: str | datetime | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Record a weighing (grams) for ``subject``; ``user`` defaults to its responsible user,
        ``date_time`` to now. The returned dict carries the new ``id``."""
        with self.lock:
            owner = self._subject(subject)
            weighing = Weighing(
                id=new_id(self.rng),
                subject=owner.id,
                date_time=canon_datetime(date_time) if date_time else self.tick(),
                weight=float(weight),
                user=self.id_of("user", user) if user else owner.responsible_user,
            )
            self.insert("weighing", weighing)
            self._changed()
            return self._describe("weighing", weighing)

    def delete_weighing(self, weighing_id: str) -> None:
        """Delete a weighing (a hard delete: it simply disappears from the API)."""
        with self.lock:
            self._get("weighing", weighing_id)
            self._remove("weighing", weighing_id)
            self._changed()

    # --- water ------------------------------------------------------------------------------------

    def _admin_values(self, owner: Subject, given: dict[str, Any]) -> dict[str, Any]:
        allowed = {"date_time", "water_administered", "water_type", "user", "session", "adlib"}
        unknown = set(given) - allowed
        if unknown:
            raise TypeError(f"unknown water administration field(s): {', '.join(sorted(unknown))}")
        values = dict(given)
        if values.get("date_time") is not None:
            values["date_time"] = canon_datetime(values["date_time"])
            if owner.death_date and values["date_time"][:10] > owner.death_date:
                raise ValueError("Water administration date after death date")
        if "water_type" in values:
            values["water_type"] = self._opt_id("watertype", values["water_type"])
        if "user" in values:
            values["user"] = self._opt_id("user", values["user"])
        if values.get("session") is not None:
            self._get("session", values["session"])
        return values

    def add_water_administration(
        self, subject: str, water_administered: float | None, **fields: Any
    ) -> dict[str, Any]:
        """Record water given (mL; None for ad-lib). Optional: ``date_time`` (default now),
        ``water_type`` name (default "Water"), ``user`` (default the responsible user),
        ``session`` id, ``adlib``. Dates after the subject's death are refused like Alyx does."""
        with self.lock:
            owner = self._subject(subject)
            if fields.get("date_time") is None:
                fields["date_time"] = self.tick()
            fields.setdefault("water_type", "Water")
            values = self._admin_values(owner, fields)
            values.setdefault("user", owner.responsible_user)
            admin = WaterAdministration(
                id=new_id(self.rng),
                subject=owner.id,
                water_administered=water_administered,
                **values,
            )
            self.insert("wateradmin", admin)
            self._changed()
            return self._describe("wateradmin", admin)

    def modify_water_administration(self, admin_id: str, **changes: Any) -> dict[str, Any]:
        """Change a water administration (any field but its subject)."""
        with self.lock:
            admin = self._get("wateradmin", admin_id)
            volume = changes.pop("water_administered", admin.water_administered)
            values = self._admin_values(self._get("subject", admin.subject), changes)
            values["water_administered"] = volume
            self._reindexed("wateradmin", admin, values)
            self._changed()
            return self._describe("wateradmin", admin)

    def delete_water_administration(self, admin_id: str) -> None:
        """Delete a water administration."""
        with self.lock:
            self._get("wateradmin", admin_id)
            self._remove("wateradmin", admin_id)
            self._changed()

    def add_water_restriction(
        self,
        subject: str,
        start_time: str | datetime,
        *,
        end_time: str | datetime | None = None,
        water_type: str = "Water",
        reference_weight: float = 0.0,
    ) -> dict[str, Any]:
        """Put ``subject`` on water restriction from ``start_time`` (open while ``end_time`` is
        None)."""
        with self.lock:
            owner = self._subject(subject)
            restriction = WaterRestriction(
                id=new_id(self.rng),
                subject=owner.id,
                start_time=canon_datetime(start_time),
                end_time=canon_datetime(end_time) if end_time else None,
                water_type=self.id_of("watertype", water_type),
                reference_weight=float(reference_weight),
            )
            self.insert("waterrestriction", restriction)
            self._changed()
            return self._describe("waterrestriction", restriction)

    def end_water_restriction(self, subject: str, end_time: str | datetime) -> None:
        """Close ``subject``'s open water restrictions at ``end_time``."""
        with self.lock:
            owner = self._subject(subject)
            for restriction in self.children("waterrestriction", owner.id):
                if restriction.end_time is None:
                    restriction.end_time = canon_datetime(end_time)
            self._changed()

    def add_surgery(
        self,
        subject: str,
        start_time: str | datetime,
        *,
        outcome_type: str = "r",
        implant_weight: float = 0.0,
        procedures: Sequence[str] = (),
        users: Sequence[str] = (),
        location: str | None = None,
        narrative: str = "",
    ) -> dict[str, Any]:
        """Record a surgery. As in Alyx, an acute (``a``) or non-recovery (``n``) outcome sets
        the subject's death date to the surgery's date."""
        with self.lock:
            owner = self._subject(subject)
            start = canon_datetime(start_time)
            surgery = Surgery(
                id=new_id(self.rng),
                subject=owner.id,
                start_time=start,
                outcome_type=outcome_type,
                implant_weight=float(implant_weight),
                lab=owner.lab,
                location=self._opt_id("location", location),
                users=self._ids("user", users) or (owner.responsible_user,),
                procedures=self._ids("procedure", procedures),
                narrative=narrative,
            )
            self.insert("surgery", surgery)
            if outcome_type in ("a", "n") and owner.death_date is None:
                owner.death_date = start[:10]
                self._close_restrictions(owner)
            self._changed()
            return self._describe("surgery", surgery)
