"""Record types and the field schema of the fake Alyx.

Records are light slotted dataclasses (a 200,000-weighing colony must stay small in memory).
Relations are stored as ids, as in the database: ``Subject.lab`` is the lab's id, and the REST
layer renders it as a name. :data:`SCHEMA` describes every queryable field, so that the
``?django=`` lookups can follow relations the way the Django ORM does.

Datetimes are kept as canonical naive ISO strings (``datetime.isoformat()``: microseconds only
when non-zero). Such strings sort and compare like the datetimes they stand for, so filtering
and ordering need no parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

# --- records --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Lab:
    id: str
    name: str
    institution: str = ""
    address: str = ""
    timezone: str = "GB"
    reference_weight_pct: float = 0.0
    zscore_weight_pct: float = 0.0
    repositories: tuple[str, ...] = ()
    json: Any = None


@dataclass(slots=True)
class User:
    id: str
    username: str
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    labs: tuple[str, ...] = ()
    """Lab ids of the user's memberships (rendered as the read-only ``lab`` list)."""
    allowed_users: tuple[str, ...] = ()
    is_stock_manager: bool = False


@dataclass(slots=True)
class Project:
    id: str
    name: str
    description: str = ""
    users: tuple[str, ...] = ()


@dataclass(slots=True)
class Procedure:
    id: str
    name: str
    description: str = ""
    json: Any = None


@dataclass(slots=True)
class WaterType:
    id: str
    name: str
    json: Any = None


@dataclass(slots=True)
class Location:
    id: str
    name: str
    lab: str | None = None


@dataclass(slots=True)
class Subject:
    id: str
    nickname: str
    lab: str
    responsible_user: str
    birth_date: str | None = None
    death_date: str | None = None
    species: str | None = "Laboratory mouse"
    sex: str = "U"
    litter: str | None = None
    strain: str | None = None
    source: str | None = None
    line: str | None = None
    projects: tuple[str, ...] = ()
    genotype: tuple[tuple[str, str], ...] = ()
    """``(allele, zygosity)`` pairs."""
    description: str = ""
    json: Any = None


@dataclass(slots=True)
class Session:
    id: str
    subject: str
    start_time: str
    auto_datetime: str
    number: int | None = 1
    lab: str | None = None
    users: tuple[str, ...] = ()
    location: str | None = None
    procedures: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    type: str = "Experiment"
    task_protocol: str = ""
    end_time: str | None = None
    narrative: str = ""
    parent_session: str | None = None
    n_correct_trials: int | None = None
    n_trials: int | None = None
    extended_qc: Any = None
    qc: str = "NOT_SET"
    json: Any = None
    name: str = ""


@dataclass(slots=True)
class Weighing:
    id: str
    subject: str
    date_time: str
    weight: float
    user: str | None = None


@dataclass(slots=True)
class WaterAdministration:
    id: str
    subject: str
    date_time: str
    water_administered: float | None
    water_type: str | None = None
    user: str | None = None
    session: str | None = None
    adlib: bool = False


@dataclass(slots=True)
class WaterRestriction:
    id: str
    subject: str
    start_time: str
    end_time: str | None = None
    water_type: str | None = None
    reference_weight: float = 0.0


@dataclass(slots=True)
class Surgery:
    id: str
    subject: str
    start_time: str
    end_time: str | None = None
    name: str = ""
    json: Any = None
    narrative: str = ""
    outcome_type: str = ""
    implant_weight: float = 0.0
    lab: str | None = None
    location: str | None = None
    users: tuple[str, ...] = ()
    procedures: tuple[str, ...] = ()


RECORD_TYPES: dict[str, type[Any]] = {
    "lab": Lab,
    "user": User,
    "project": Project,
    "procedure": Procedure,
    "watertype": WaterType,
    "location": Location,
    "subject": Subject,
    "session": Session,
    "weighing": Weighing,
    "wateradmin": WaterAdministration,
    "waterrestriction": WaterRestriction,
    "surgery": Surgery,
}
"""Every kind of record the colony holds, by kind name."""

KIND_ALIASES = {
    "labs": "lab",
    "users": "user",
    "projects": "project",
    "procedures": "procedure",
    "water_types": "watertype",
    "water-type": "watertype",
    "locations": "location",
    "subjects": "subject",
    "sessions": "session",
    "weighings": "weighing",
    "water_administrations": "wateradmin",
    "water-administrations": "wateradmin",
    "water_restrictions": "waterrestriction",
    "water-restriction": "waterrestriction",
    "surgeries": "surgery",
}
"""Endpoint-style names accepted wherever the colony takes a kind ("subjects" = "subject")."""

SUBJECT_CHILDREN = ("session", "weighing", "wateradmin", "waterrestriction", "surgery")
"""Kinds deleted with their subject (``on_delete=CASCADE``)."""

MODEL_NAMES = {
    "lab": "Lab",
    "user": "LabMember",
    "project": "Project",
    "procedure": "ProcedureType",
    "watertype": "WaterType",
    "location": "LabLocation",
    "subject": "Subject",
    "session": "Session",
    "weighing": "Weighing",
    "wateradmin": "WaterAdministration",
    "waterrestriction": "WaterRestriction",
    "surgery": "Surgery",
}
"""Django model class names, as they appear in error messages ("No Weighing matches ...")."""

# --- schema for ORM-style lookups -----------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One queryable field: a scalar type, or a relation to another kind.

    ``type`` is one of ``str int float bool date datetime uuid json`` (scalars) or ``fk m2m
    reverse`` (relations, with ``target`` the related kind; for ``reverse``, ``attr`` is the
    child's field pointing back). Scalars without a record attribute read as None.
    """

    type: str
    target: str = ""
    attr: str = ""


def _f(type_: str, target: str = "", attr: str = "") -> Field:
    return Field(type_, target, attr)


_ID = {"id": _f("uuid")}

SCHEMA: dict[str, dict[str, Field]] = {
    "lab": {
        **_ID,
        "name": _f("str"),
        "institution": _f("str"),
        "address": _f("str"),
        "timezone": _f("str"),
        "reference_weight_pct": _f("float"),
        "zscore_weight_pct": _f("float"),
        "json": _f("json"),
        "subject": _f("reverse", "subject", "lab"),
    },
    "user": {
        **_ID,
        "username": _f("str"),
        "email": _f("str"),
        "first_name": _f("str"),
        "last_name": _f("str"),
        "is_stock_manager": _f("bool"),
        "allowed_users": _f("m2m", "user"),
        "subjects_responsible": _f("reverse", "subject", "responsible_user"),
    },
    "project": {**_ID, "name": _f("str"), "description": _f("str"), "users": _f("m2m", "user")},
    "procedure": {**_ID, "name": _f("str"), "description": _f("str"), "json": _f("json")},
    "watertype": {**_ID, "name": _f("str"), "json": _f("json")},
    "location": {**_ID, "name": _f("str"), "lab": _f("fk", "lab")},
    "subject": {
        **_ID,
        "nickname": _f("str"),
        "lab": _f("fk", "lab"),
        "responsible_user": _f("fk", "user"),
        "birth_date": _f("date"),
        "death_date": _f("date"),
        "species": _f("str"),
        "sex": _f("str"),
        "litter": _f("str"),
        "strain": _f("str"),
        "source": _f("str"),
        "line": _f("str"),
        "projects": _f("m2m", "project"),
        "genotype": _f("json"),
        "description": _f("str"),
        "json": _f("json"),
        "actions_sessions": _f("reverse", "session", "subject"),
        "weighings": _f("reverse", "weighing", "subject"),
        "water_administrations": _f("reverse", "wateradmin", "subject"),
        "actions_waterrestrictions": _f("reverse", "waterrestriction", "subject"),
        "actions_surgerys": _f("reverse", "surgery", "subject"),
    },
    "session": {
        **_ID,
        "subject": _f("fk", "subject"),
        "users": _f("m2m", "user"),
        "location": _f("fk", "location"),
        "procedures": _f("m2m", "procedure"),
        "lab": _f("fk", "lab"),
        "projects": _f("m2m", "project"),
        "type": _f("str"),
        "task_protocol": _f("str"),
        "number": _f("int"),
        "start_time": _f("datetime"),
        "end_time": _f("datetime"),
        "narrative": _f("str"),
        "parent_session": _f("fk", "session"),
        "n_correct_trials": _f("int"),
        "n_trials": _f("int"),
        "extended_qc": _f("json"),
        "qc": _f("str"),
        "auto_datetime": _f("datetime"),
        "json": _f("json"),
        "name": _f("str"),
        "wateradmin_session_related": _f("reverse", "wateradmin", "session"),
    },
    "weighing": {
        **_ID,
        "subject": _f("fk", "subject"),
        "date_time": _f("datetime"),
        "weight": _f("float"),
        "user": _f("fk", "user"),
    },
    "wateradmin": {
        **_ID,
        "subject": _f("fk", "subject"),
        "date_time": _f("datetime"),
        "water_administered": _f("float"),
        "water_type": _f("fk", "watertype"),
        "user": _f("fk", "user"),
        "session": _f("fk", "session"),
        "adlib": _f("bool"),
        "json": _f("json"),
    },
    "waterrestriction": {
        **_ID,
        "subject": _f("fk", "subject"),
        "start_time": _f("datetime"),
        "end_time": _f("datetime"),
        "water_type": _f("fk", "watertype"),
        "reference_weight": _f("float"),
        "narrative": _f("str"),
        "json": _f("json"),
    },
    "surgery": {
        **_ID,
        "subject": _f("fk", "subject"),
        "name": _f("str"),
        "json": _f("json"),
        "narrative": _f("str"),
        "start_time": _f("datetime"),
        "end_time": _f("datetime"),
        "outcome_type": _f("str"),
        "implant_weight": _f("float"),
        "lab": _f("fk", "lab"),
        "location": _f("fk", "location"),
        "users": _f("m2m", "user"),
        "procedures": _f("m2m", "procedure"),
    },
}

# The real Subject model has many more columns and reverse relations than the REST layer shows;
# this is the list the live server printed for a bad lookup (fixture subjects_filter_django_bad).
# Names here that SCHEMA does not model are valid lookups whose value is always empty.
_SUBJECT_CHOICES = [
    "actions_chronicrecordings", "actions_otheractions", "actions_sessions", "actions_surgerys",
    "actions_virusinjections", "actions_waterrestrictions", "actual_severity", "adverse_effects",
    "birth_date", "cage", "cull", "death_date", "description", "ear_mark", "genotype",
    "genotype_date", "genotype_test", "genotypetest", "housing_subjects", "housings", "id",
    "json", "lab", "lab_id", "line", "line_id", "litter", "litter_father", "litter_id", "mother1",
    "mother2", "name", "nickname", "notification", "projects", "protocol_number",
    "reduced_date", "request", "request_id", "responsible_user", "responsible_user_id", "sex",
    "source", "source_id", "species", "species_id", "strain", "strain_id", "to_be_culled",
    "to_be_genotyped", "water_administrations", "wean_date", "weighings", "zygosity",
]  # fmt: skip


def field_choices(kind: str) -> list[str]:
    """Field names Django would list in "Cannot resolve keyword ... Choices are: ..."."""
    if kind == "subject":
        return list(_SUBJECT_CHOICES)
    names = set(SCHEMA[kind])
    names.update(f"{name}_id" for name, spec in SCHEMA[kind].items() if spec.type == "fk")
    return sorted(names)


def unmodelled_field(kind: str, name: str) -> bool:
    """True for a real model field the fake does not store (its value reads as empty)."""
    return kind == "subject" and name in _SUBJECT_CHOICES and name not in SCHEMA[kind]


# --- canonical values -----------------------------------------------------------------------------


def canon_datetime(value: str | datetime) -> str:
    """A naive ISO datetime string; aware values are converted to UTC first (``USE_TZ=False``)."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat()


def canon_date(value: str | date) -> str:
    """A ``YYYY-MM-DD`` string from a date, a datetime or an ISO string of either."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        return datetime.fromisoformat(value).date().isoformat()
