"""REST representations of the fake Alyx's records, field for field as the live server sends them.

Foreign keys become slugs (lab name, username, nickname...) except on surgeries, whose plain
``ModelSerializer`` sends UUIDs. The subject's computed fields follow Alyx's water control at
the colony's ``today``:

- ``age_weeks``: whole weeks from birth to death, or to today while alive;
- ``last_water_restriction``: start of the restriction in force today, else None;
- ``reference_weight``: the latest restriction's reference weight, minus the implant weight at its
  start (the live server sent 23.8 for 25.0 with a 1.2 g implant), else that of the restriction in
  force (0 falls back to the last weighing before it), else 0;
- ``expected_water``: 4% of (last weighing up to today - implant weight), 5% when the lab
  weighs against its reference weight and the mouse is under 80% of it;
- ``remaining_water``: expected water minus the water given today.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from limsync.testing.alyx.models import (
    Lab,
    Procedure,
    Project,
    Session,
    Subject,
    Surgery,
    User,
    WaterAdministration,
    WaterRestriction,
    WaterType,
    Weighing,
)

if TYPE_CHECKING:
    from limsync.testing.alyx.store import Store

# Characters Django's reverse() leaves unquoted in a path segment.
_SAFE = "!$&'()*+,;=~:@"


class Renderer:
    """Turns records into API dicts; ``base`` is the absolute API root for ``url`` fields, or
    None to leave ``url`` out (the mutation API's return values). Use under the colony lock."""

    def __init__(self, colony: Store, base: str | None) -> None:
        self.colony = colony
        self.base = base
        self.today = colony.today
        self._labs = colony.table("lab")
        self._users = colony.table("user")
        self._projects = colony.table("project")
        self._subjects = colony.table("subject")

    def url(self, collection: str, key: str) -> str | None:
        """``<base>/<collection>/<key>`` with ``key`` quoted as Django's reverse() does."""
        if self.base is None:
            return None
        return f"{self.base}/{collection}/{quote(key, safe=_SAFE)}"

    def _put_url(self, out: dict[str, Any], collection: str, key: str) -> None:
        url = self.url(collection, key)
        if url is not None:
            out["url"] = url

    def _name(self, table: dict[str, Any], record_id: str | None, attr: str = "name") -> Any:
        return None if record_id is None else getattr(table[record_id], attr)

    def _usernames(self, ids: tuple[str, ...]) -> list[str]:
        return [self._users[i].username for i in ids]

    def _project_names(self, ids: tuple[str, ...]) -> list[str]:
        return [self._projects[i].name for i in ids]

    def describe(self, kind: str, record: Any) -> dict[str, Any]:
        """The list representation of any record, with ``id`` even where the API hides it."""
        renderers: dict[str, Callable[[Any], dict[str, Any]]] = {
            "subject": self.subject,
            "session": self.session_detail,
            "weighing": self.weighing,
            "wateradmin": self.water_administration,
            "waterrestriction": self.water_restriction,
            "surgery": self.surgery,
        }
        return {**renderers[kind](record), "id": record.id}

    # --- subjects ---------------------------------------------------------------------------------

    def subject(self, s: Subject) -> dict[str, Any]:
        """SubjectList: 24 fields, computed ones evaluated at the colony's ``today``."""
        reference, last_restriction, expected, remaining = self.water(s)
        out: dict[str, Any] = {"nickname": s.nickname}
        self._put_url(out, "subjects", s.nickname)
        out.update(
            id=s.id,
            responsible_user=self._users[s.responsible_user].username,
            birth_date=s.birth_date,
            age_weeks=self.age_weeks(s),
            death_date=s.death_date,
            species=s.species,
            sex=s.sex,
            litter=s.litter,
            strain=s.strain,
            source=s.source,
            line=s.line,
            projects=self._project_names(s.projects),
            session_projects=self.session_projects(s),
            lab=self._labs[s.lab].name,
            genotype=[f"{allele} {zygosity}" for allele, zygosity in s.genotype],
            description=s.description,
            alive=s.death_date is None,
            reference_weight=reference,
            last_water_restriction=last_restriction,
            expected_water=expected,
            remaining_water=remaining,
            json=s.json,
        )
        return out

    def subject_detail(self, s: Subject) -> dict[str, Any]:
        """SubjectDetail: the list fields, genotype as objects, plus weighings and water."""
        out = self.subject(s)
        out["genotype"] = [{"allele": a, "zygosity": z} for a, z in s.genotype]
        by_time = lambda r: r.date_time  # noqa: E731
        weighings = sorted(self.colony.children("weighing", s.id), key=by_time)
        admins = sorted(self.colony.children("wateradmin", s.id), key=by_time)
        out["weighings"] = [self.weighing(w) for w in weighings]
        out["water_administrations"] = [self.water_administration(a) for a in admins]
        return out

    def age_weeks(self, s: Subject) -> int:
        if s.birth_date is None:
            return 0
        until = date.fromisoformat(s.death_date) if s.death_date else self.today
        return (until - date.fromisoformat(s.birth_date)).days // 7

    def session_projects(self, s: Subject) -> list[str]:
        ids = {p for session in self.colony.children("session", s.id) for p in session.projects}
        return sorted(self._projects[i].name for i in ids)

    def water(self, s: Subject) -> tuple[float, str | None, float, float]:
        """``reference_weight, last_water_restriction, expected_water, remaining_water``."""
        today = self.today.isoformat()
        noon = f"{today}T12:00:00"
        restrictions = sorted(
            self.colony.children("waterrestriction", s.id), key=lambda r: r.start_time
        )
        current = None
        started = [r for r in restrictions if r.start_time[:10] <= today]
        if started and (started[-1].end_time is None or started[-1].end_time >= noon):
            current = started[-1]
        implants = sorted(
            (x.start_time[:10], x.implant_weight)
            for x in self.colony.children("surgery", s.id)
            if x.implant_weight
        )

        def implant_on(day: str) -> float:
            before = [w for d, w in implants if d <= day]
            return before[-1] if before else 0.0

        weighings = sorted((w.date_time, w.weight) for w in self.colony.children("weighing", s.id))
        reference = 0.0
        if restrictions and restrictions[-1].reference_weight:
            latest = restrictions[-1]
            reference = latest.reference_weight - implant_on(latest.start_time[:10])
        elif current is not None:
            reference = current.reference_weight
            if not reference:
                before = [w for t, w in weighings if t[:10] <= current.start_time[:10]]
                reference = before[-1] if before else 0.0
        last = [w for t, w in weighings if t[:10] <= today]
        weight = last[-1] if last else 0.0
        lab = self._labs[s.lab]
        factor = 0.04
        if lab.reference_weight_pct > 0 and weight < 0.8 * reference:
            factor = 0.05
        expected = factor * (weight - implant_on(today)) if last else 0.0
        given = sum(
            a.water_administered or 0.0
            for a in self.colony.children("wateradmin", s.id)
            if a.date_time[:10] == today
        )
        last_restriction = current.start_time if current is not None else None
        return reference, last_restriction, expected, expected - given

    # --- sessions ---------------------------------------------------------------------------------

    def session(self, x: Session) -> dict[str, Any]:
        """SessionList: the eight summary fields."""
        return {
            "id": x.id,
            "subject": self._subjects[x.subject].nickname,
            "start_time": x.start_time,
            "number": x.number,
            "lab": self._name(self._labs, x.lab),
            "projects": self._project_names(x.projects),
            "url": self.url("sessions", x.id),
            "task_protocol": x.task_protocol,
        }

    def session_detail(self, x: Session) -> dict[str, Any]:
        """SessionDetail: the full record, with ``auto_datetime`` and related water."""
        procedures = self.colony.table("procedure")
        admins = sorted(
            self.colony.reverse("wateradmin", "session", x.id), key=lambda a: a.date_time
        )
        out: dict[str, Any] = {
            "subject": self._subjects[x.subject].nickname,
            "users": self._usernames(x.users),
            "location": self._name(self.colony.table("location"), x.location),
            "procedures": [procedures[i].name for i in x.procedures],
            "lab": self._name(self._labs, x.lab),
            "projects": self._project_names(x.projects),
            "type": x.type,
            "task_protocol": x.task_protocol,
            "number": x.number,
            "start_time": x.start_time,
            "end_time": x.end_time,
            "narrative": x.narrative,
            "parent_session": (
                self.url("sessions", x.parent_session) if x.parent_session else None
            ),
            "n_correct_trials": x.n_correct_trials,
            "n_trials": x.n_trials,
        }
        self._put_url(out, "sessions", x.id)
        out.update(
            extended_qc=x.extended_qc,
            qc=x.qc,
            wateradmin_session_related=[
                {
                    "id": a.id,
                    "name": "",
                    "water_type": self._water_type(a.water_type),
                    "water_administered": a.water_administered,
                }
                for a in admins
            ],
            data_dataset_session_related=[],
            auto_datetime=x.auto_datetime,
            id=x.id,
            json=x.json,
            probe_insertion=[],
            field_of_view=[],
            notes=[],
        )
        return out

    # --- actions ----------------------------------------------------------------------------------

    def _water_type(self, water_type_id: str | None) -> str | None:
        name: str | None = self._name(self.colony.table("watertype"), water_type_id)
        return name

    def weighing(self, w: Weighing) -> dict[str, Any]:
        """Weighing: no ``id``; the UUID is only inside ``url``."""
        out: dict[str, Any] = {
            "subject": self._subjects[w.subject].nickname,
            "date_time": w.date_time,
            "weight": w.weight,
            "user": self._name(self._users, w.user, "username"),
        }
        self._put_url(out, "weighings", w.id)
        return out

    def water_administration(self, a: WaterAdministration) -> dict[str, Any]:
        """WaterAdministration: no ``id``; ``session`` is a bare UUID."""
        out: dict[str, Any] = {
            "subject": self._subjects[a.subject].nickname,
            "date_time": a.date_time,
            "water_administered": a.water_administered,
            "water_type": self._water_type(a.water_type),
            "user": self._name(self._users, a.user, "username"),
        }
        self._put_url(out, "water-administrations", a.id)
        out.update(session=a.session, adlib=a.adlib)
        return out

    def water_restriction(self, r: WaterRestriction) -> dict[str, Any]:
        """WaterRestriction: no ``id`` and no ``url`` at all."""
        return {
            "subject": self._subjects[r.subject].nickname,
            "start_time": r.start_time,
            "end_time": r.end_time,
            "water_type": self._water_type(r.water_type),
            "reference_weight": r.reference_weight,
        }

    def surgery(self, x: Surgery) -> dict[str, Any]:
        """Surgery: every foreign key as a UUID, unlike sessions."""
        return {
            "id": x.id,
            "subject": self._subjects[x.subject].nickname,
            "name": x.name,
            "json": x.json,
            "narrative": x.narrative,
            "start_time": x.start_time,
            "end_time": x.end_time,
            "outcome_type": x.outcome_type,
            "implant_weight": x.implant_weight,
            "lab": x.lab,
            "location": x.location,
            "users": list(x.users),
            "procedures": list(x.procedures),
        }

    # --- reference data ---------------------------------------------------------------------------

    def lab(self, x: Lab) -> dict[str, Any]:
        """Lab: no ``id``."""
        return {
            "name": x.name,
            "institution": x.institution,
            "address": x.address,
            "timezone": x.timezone,
            "repositories": list(x.repositories),
            "reference_weight_pct": x.reference_weight_pct,
            "zscore_weight_pct": x.zscore_weight_pct,
            "json": x.json,
        }

    def user(self, x: User) -> dict[str, Any]:
        """User: ``subjects_responsible`` by nickname, ``lab`` from memberships."""
        owned = self.colony.reverse("subject", "responsible_user", x.id)
        return {
            "id": x.id,
            "username": x.username,
            "email": x.email,
            "subjects_responsible": sorted(s.nickname for s in owned),
            "lab": [self._labs[i].name for i in x.labs],
            "allowed_users": self._usernames(x.allowed_users),
            "is_stock_manager": x.is_stock_manager,
        }

    def project(self, x: Project) -> dict[str, Any]:
        """Project: no ``id``."""
        return {"name": x.name, "description": x.description, "users": self._usernames(x.users)}

    def procedure(self, x: Procedure) -> dict[str, Any]:
        return {"id": x.id, "name": x.name, "json": x.json, "description": x.description}

    def water_type(self, x: WaterType) -> dict[str, Any]:
        return {"url": self.url("water-type", x.name), "json": x.json, "name": x.name}
