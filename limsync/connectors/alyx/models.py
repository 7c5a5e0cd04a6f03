"""Source models of the Alyx streams: one pydantic model per REST representation.

Field lists and types follow the Alyx contract (cortex-lab/alyx 3.6.1, ``contracts/alyx.md``
section 2.7). Unknown fields are allowed and kept, so a newer server does not break validation
and nothing it sends is lost. Datetimes are naive on upstream Alyx and stay naive here (pydantic
keeps an ISO string without offset naive); the ``alyx-local`` fork sends aware ones, which stay
aware.

Every model leaves the free-form ``json`` field undeclared: it is kept as an extra field (so it
still takes part in the content hash), and a field named ``json`` would shadow
``BaseModel.json``.

Weighings and water administrations carry their UUID only inside ``url``; water restrictions
have no identifier at all. :func:`uuid_from_url` and :func:`water_restriction_id` derive the
``id`` the connector adds to those records before the engine sees them.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict


class AlyxRecord(BaseModel):
    """Base of the Alyx source models: extra fields allowed and kept."""

    model_config = ConfigDict(extra="allow")


class Lab(AlyxRecord):
    """``GET /labs``: keyed by name (labs have no id in the REST output)."""

    name: str
    institution: str = ""
    address: str = ""
    timezone: str = ""
    repositories: list[str] = []
    reference_weight_pct: float | None = None
    zscore_weight_pct: float | None = None


class User(AlyxRecord):
    """``GET /users``."""

    id: uuid.UUID
    username: str
    email: str = ""
    subjects_responsible: list[str] = []
    lab: list[str] = []
    allowed_users: list[str] = []
    is_stock_manager: bool = False


class Project(AlyxRecord):
    """``GET /projects``: keyed by name (no id in the REST output)."""

    name: str
    description: str = ""
    users: list[str] = []


class ProcedureType(AlyxRecord):
    """``GET /procedures``: the procedure types (surgeries refer to them by UUID)."""

    id: uuid.UUID
    name: str
    description: str = ""


class WaterType(AlyxRecord):
    """``GET /water-type``: keyed by name."""

    name: str
    url: str | None = None


class Subject(AlyxRecord):
    """``GET /subjects`` (the list representation).

    Keyed by ``id``: the nickname is unique only per lab and per responsible user, and changes
    on rename. The fields marked computed in the contract are declared volatile by the stream.
    """

    id: uuid.UUID
    nickname: str
    url: str | None = None
    responsible_user: str | None = None
    birth_date: date | None = None
    age_weeks: int | None = None
    death_date: date | None = None
    species: str | None = None
    sex: Literal["M", "F", "U"] | None = None
    litter: str | None = None
    strain: str | None = None
    source: str | None = None
    line: str | None = None
    projects: list[str] = []
    session_projects: list[str] = []
    lab: str
    genotype: list[Any] = []
    description: str = ""
    alive: bool | None = None
    reference_weight: float | None = None
    last_water_restriction: datetime | None = None
    expected_water: float | None = None
    remaining_water: float | None = None


SessionQC = Literal["NOT_SET", "PASS", "WARNING", "FAIL", "CRITICAL"]


class Session(AlyxRecord):
    """``GET /sessions/{id}`` (the detail), or the list summary when details are turned off.

    The summary has only ``id, subject, start_time, number, lab, projects, url,
    task_protocol``, so the fields only the detail has are optional.
    """

    id: uuid.UUID
    subject: str
    start_time: datetime
    number: int | None = None
    lab: str | None = None
    projects: list[str] = []
    url: str | None = None
    task_protocol: str | None = None
    # detail only
    users: list[str] | None = None
    location: str | None = None
    procedures: list[str] | None = None
    type: str | None = None
    end_time: datetime | None = None
    narrative: str | None = None
    parent_session: str | None = None
    n_correct_trials: int | None = None
    n_trials: int | None = None
    extended_qc: Any = None
    qc: SessionQC | None = None
    wateradmin_session_related: list[dict[str, Any]] | None = None
    data_dataset_session_related: list[dict[str, Any]] | None = None
    auto_datetime: datetime | None = None
    probe_insertion: list[Any] | None = None
    field_of_view: list[Any] | None = None
    notes: list[Any] | None = None


class Weighing(AlyxRecord):
    """``GET /weighings``; ``id`` is derived from ``url`` by the connector."""

    id: uuid.UUID
    subject: str
    date_time: datetime
    weight: float
    user: str | None = None
    url: str | None = None


class WaterAdministration(AlyxRecord):
    """``GET /water-administrations``; ``id`` is derived from ``url`` by the connector."""

    id: uuid.UUID
    subject: str
    date_time: datetime
    water_administered: float | None = None
    water_type: str | None = None
    user: str | None = None
    url: str | None = None
    session: uuid.UUID | None = None
    adlib: bool = False


class WaterRestriction(AlyxRecord):
    """``GET /water-restriction``; ``id`` is derived by :func:`water_restriction_id`."""

    id: uuid.UUID
    subject: str
    start_time: datetime
    end_time: datetime | None = None
    water_type: str | None = None
    reference_weight: float | None = None


class Surgery(AlyxRecord):
    """``GET /surgeries``: unlike sessions, lab, location, users and procedures are UUIDs."""

    id: uuid.UUID
    subject: str
    name: str | None = None
    narrative: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    outcome_type: Literal["a", "r", "n", ""] | None = None
    implant_weight: float | None = None
    lab: uuid.UUID | None = None
    location: uuid.UUID | None = None
    users: list[uuid.UUID] = []
    procedures: list[uuid.UUID] = []


# --- derived identifiers --------------------------------------------------------------------------

#: Namespace of the derived water-restriction ids (a fixed, arbitrary UUID; never change it,
#: or every stored water restriction would look deleted and re-created).
WATER_RESTRICTION_NAMESPACE = uuid.UUID("3f0c6a52-8a4e-4d7e-9f61-2b51f0d8c1a7")


def uuid_from_url(url: Any) -> str | None:
    """The UUID that ends a detail URL (``.../weighings/<uuid>``), or None if there is none.

    Only the path is read, so the host and scheme in the URL (built by the server from the Host
    header, possibly wrong behind a proxy) do not matter.
    """
    if not isinstance(url, str) or not url:
        return None
    last = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
    try:
        return str(uuid.UUID(last))
    except ValueError:
        return None


def water_restriction_id(record: dict[str, Any]) -> str | None:
    """A stable id for a water restriction: a UUIDv5 of its subject and start time.

    Alyx exposes no identifier for water restrictions, but a subject cannot sensibly start two
    restrictions at the same instant, so (subject nickname, start time) identifies one; the
    start time is normalised (parsed, then written back as ISO) so a change in how the server
    formats it does not change the id. Nicknames are unique per lab only, so two subjects of
    the same nickname in different labs would collide only if they also started a restriction
    at the very same microsecond.

    If someone edits the start time (or renames the subject), the id changes: the next full
    scan sees the old restriction as gone (handled by the stream's delete policy) and the
    edited one as new. Returns None when subject or start time is missing, so the record fails
    validation and is quarantined instead of getting a made-up key.
    """
    subject = record.get("subject")
    start = record.get("start_time")
    if not isinstance(subject, str) or not subject or not isinstance(start, str) or not start:
        return None
    try:
        start = datetime.fromisoformat(start).isoformat()
    except ValueError:
        return None
    return str(uuid.uuid5(WATER_RESTRICTION_NAMESPACE, f"{subject}\x1f{start}"))
