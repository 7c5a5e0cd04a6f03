"""The default IBL-style pipeline for Alyx, and how each Alyx stream maps into it.

Schemas and tables (DataJoint names in brackets)::

    reference   Lab [#lab], LabMember [lab_member], Project [project],
                ProcedureType [#procedure_type], WaterType [#water_type]
    subject     Subject [subject], SubjectProject [subject_project]
    acquisition Session [session]
    action      Weighing [weighing], WaterAdministration [water_administration],
                WaterRestriction [water_restriction], Surgery [surgery]

Subjects are keyed by their Alyx UUID: nicknames repeat across labs and change on rename.
Weighings, water records and surgeries name their subject by nickname only, so the mapping
looks the UUID up by (lab, nickname) when the record carries the lab, or by nickname alone; an
ambiguous nickname quarantines the record with a message that says so, rather than guessing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from limsync.pipeline import Key, Manual, Ref, Schema, SqlType
from limsync.pipeline import Lookup as LookupTier
from limsync.sync.mapping import Emitted, Lookup, StreamMap

reference = Schema("reference", "labs, people, projects, vocabularies")
subject = Schema("subject", "experimental subjects")
acquisition = Schema("acquisition", "sessions")
action = Schema("action", "weighings, water, surgeries")

Name = Annotated[str, Field(max_length=255)]
Text = Annotated[str, SqlType("text")]


class Lab(LookupTier):
    """Laboratory (Alyx lab)."""

    __schema__ = reference
    lab_name: Annotated[str, Key, Field(max_length=64)]
    institution: Name = ""
    address: Name = ""
    timezone: Annotated[str, Field(max_length=64)] = ""
    reference_weight_pct: float | None = None
    zscore_weight_pct: float | None = None


class LabMember(Manual):
    """A person with an Alyx account."""

    __schema__ = reference
    user_name: Annotated[str, Key, Field(max_length=150)]
    user_uuid: uuid.UUID
    email: Name = ""
    is_stock_manager: bool = False


class Project(Manual):
    """A project subjects and sessions belong to."""

    __schema__ = reference
    project_name: Annotated[str, Key, Field(max_length=255)]
    project_description: Annotated[str, Field(max_length=1024)] = ""


class ProcedureType(LookupTier):
    """A kind of procedure (Alyx procedure type)."""

    __schema__ = reference
    procedure_type_name: Annotated[str, Key, Field(max_length=255)]
    procedure_type_uuid: uuid.UUID
    procedure_type_description: Text = ""


class WaterType(LookupTier):
    """A kind of water or reward."""

    __schema__ = reference
    watertype_name: Annotated[str, Key, Field(max_length=255)]


class Subject(Manual):
    """Experimental subject (Alyx subject), keyed by its Alyx UUID."""

    __schema__ = subject
    __references__ = (Lab,)
    subject_uuid: Annotated[uuid.UUID, Key]
    subject_nickname: Annotated[str, Field(max_length=255, description="Alyx nickname")]
    sex: Literal["M", "F", "U"] = "U"
    subject_birth_date: dt.date | None = None
    death_date: dt.date | None = None
    responsible_user: Annotated[str, Field(max_length=150)] | None = None
    species: Name | None = None
    strain: Name | None = None
    line: Name | None = None
    source: Name | None = None
    litter: Name | None = None
    subject_description: Text = ""
    genotype: list[Any] | None = None


class SubjectProject(Manual):
    """Which projects a subject belongs to."""

    __schema__ = subject
    __references__ = (Ref(Subject, key=True), Ref(Project, key=True))


class Session(Manual):
    """A recording or training session (Alyx session detail)."""

    __schema__ = acquisition
    __references__ = (Subject,)
    session_uuid: Annotated[uuid.UUID, Key]
    session_number: int | None = None
    session_start_time: dt.datetime
    session_end_time: dt.datetime | None = None
    session_lab: Annotated[str, Field(max_length=64)] | None = None
    session_type: Name | None = None
    task_protocol: Name | None = None
    session_location: Name | None = None
    session_narrative: Text | None = None
    n_trials: int | None = None
    n_correct_trials: int | None = None
    qc: Annotated[str, Field(max_length=16)] | None = None
    session_users: list[str] | None = None
    session_procedures: list[str] | None = None
    session_projects: list[str] | None = None
    extended_qc: dict[str, Any] | None = None
    auto_datetime: dt.datetime | None = None


class Weighing(Manual):
    """A weight measurement."""

    __schema__ = action
    __references__ = (Subject,)
    weighing_uuid: Annotated[uuid.UUID, Key]
    weighing_time: dt.datetime
    weight: float = Field(description="grams")
    weighing_user: Annotated[str, Field(max_length=150)] | None = None


class WaterAdministration(Manual):
    """Water given to a subject."""

    __schema__ = action
    __references__ = (Subject,)
    wateradmin_uuid: Annotated[uuid.UUID, Key]
    administration_time: dt.datetime
    water_administered: float | None = Field(None, description="mL")
    watertype_name: Name | None = None
    adlib: bool = False
    administration_user: Annotated[str, Field(max_length=150)] | None = None
    session_uuid: uuid.UUID | None = None


class WaterRestriction(Manual):
    """A period of water restriction (Alyx sends no id: keyed by its derived id)."""

    __schema__ = action
    __references__ = (Subject,)
    restriction_uuid: Annotated[uuid.UUID, Key]
    restriction_start_time: dt.datetime
    restriction_end_time: dt.datetime | None = None
    watertype_name: Name | None = None
    reference_weight: float | None = None


class Surgery(Manual):
    """A surgery (procedure uuids as sent by Alyx)."""

    __schema__ = action
    __references__ = (Subject,)
    surgery_uuid: Annotated[uuid.UUID, Key]
    surgery_name: Name | None = None
    surgery_start_time: dt.datetime | None = None
    surgery_end_time: dt.datetime | None = None
    outcome_type: Annotated[str, Field(max_length=1)] | None = None
    surgery_narrative: Text | None = None
    implant_weight: float | None = None
    surgery_procedures: list[str] | None = None


SCHEMAS = (reference, subject, acquisition, action)


def _subject_uuid(rec: BaseModel) -> Lookup:
    nickname = rec.subject  # type: ignore[attr-defined]
    # The subject's lab: from a lab-by-lab read (weighings, water, surgeries) or the session's.
    lab = getattr(rec, "subject_lab", None) or getattr(rec, "lab", None)
    if not isinstance(lab, str):
        lab = None  # surgeries name their lab by uuid, which labs do not carry
    return Lookup(Subject, {"lab_name": lab, "subject_nickname": nickname}, "subject_uuid")


def _labs(rec: Any) -> Iterable[Emitted]:
    yield Lab, {
        "lab_name": rec.name, "institution": rec.institution or "", "address": rec.address or "",
        "timezone": rec.timezone or "", "reference_weight_pct": rec.reference_weight_pct,
        "zscore_weight_pct": rec.zscore_weight_pct,
    }  # fmt: skip


def _users(rec: Any) -> Iterable[Emitted]:
    yield LabMember, {
        "user_name": rec.username, "user_uuid": rec.id, "email": rec.email or "",
        "is_stock_manager": bool(rec.is_stock_manager),
    }  # fmt: skip


def _projects(rec: Any) -> Iterable[Emitted]:
    yield Project, {"project_name": rec.name, "project_description": rec.description or ""}


def _procedures(rec: Any) -> Iterable[Emitted]:
    yield ProcedureType, {
        "procedure_type_name": rec.name, "procedure_type_uuid": rec.id,
        "procedure_type_description": rec.description or "",
    }  # fmt: skip


def _water_types(rec: Any) -> Iterable[Emitted]:
    yield WaterType, {"watertype_name": rec.name}


def _subjects(rec: Any) -> Iterable[Emitted]:
    yield Subject, {
        "subject_uuid": rec.id, "lab_name": rec.lab, "subject_nickname": rec.nickname,
        "sex": rec.sex or "U", "subject_birth_date": rec.birth_date, "death_date": rec.death_date,
        "responsible_user": rec.responsible_user, "species": rec.species, "strain": rec.strain,
        "line": rec.line, "source": rec.source, "litter": rec.litter,
        "subject_description": rec.description or "", "genotype": rec.genotype or None,
    }  # fmt: skip
    for project in sorted(set(rec.projects)):
        yield SubjectProject, {"subject_uuid": rec.id, "project_name": project}


def _sessions(rec: Any) -> Iterable[Emitted]:
    yield Session, {
        "session_uuid": rec.id, "subject_uuid": _subject_uuid(rec),
        "session_number": rec.number, "session_start_time": rec.start_time,
        "session_end_time": rec.end_time, "session_lab": rec.lab, "session_type": rec.type,
        "task_protocol": rec.task_protocol, "session_location": rec.location,
        "session_narrative": rec.narrative, "n_trials": rec.n_trials,
        "n_correct_trials": rec.n_correct_trials,
        "qc": rec.qc.value if hasattr(rec.qc, "value") else rec.qc,
        "session_users": rec.users, "session_procedures": rec.procedures,
        "session_projects": rec.projects or None,
        "extended_qc": rec.extended_qc if isinstance(rec.extended_qc, dict) else None,
        "auto_datetime": rec.auto_datetime,
    }  # fmt: skip


def _weighings(rec: Any) -> Iterable[Emitted]:
    yield Weighing, {
        "weighing_uuid": rec.id, "subject_uuid": _subject_uuid(rec), "weighing_time": rec.date_time,
        "weight": rec.weight, "weighing_user": rec.user,
    }  # fmt: skip


def _water_administrations(rec: Any) -> Iterable[Emitted]:
    yield WaterAdministration, {
        "wateradmin_uuid": rec.id, "subject_uuid": _subject_uuid(rec),
        "administration_time": rec.date_time, "water_administered": rec.water_administered,
        "watertype_name": rec.water_type, "adlib": bool(rec.adlib),
        "administration_user": rec.user, "session_uuid": rec.session,
    }  # fmt: skip


def _water_restrictions(rec: Any) -> Iterable[Emitted]:
    yield WaterRestriction, {
        "restriction_uuid": rec.id, "subject_uuid": _subject_uuid(rec),
        "restriction_start_time": rec.start_time, "restriction_end_time": rec.end_time,
        "watertype_name": rec.water_type, "reference_weight": rec.reference_weight,
    }  # fmt: skip


def _surgeries(rec: Any) -> Iterable[Emitted]:
    yield Surgery, {
        "surgery_uuid": rec.id, "subject_uuid": _subject_uuid(rec), "surgery_name": rec.name,
        "surgery_start_time": rec.start_time, "surgery_end_time": rec.end_time,
        "outcome_type": rec.outcome_type or None, "surgery_narrative": rec.narrative,
        "implant_weight": rec.implant_weight,
        "surgery_procedures": [str(p) for p in rec.procedures] or None,
    }  # fmt: skip


STREAM_MAPS = {
    m.stream: m
    for m in (
        StreamMap("labs", (Lab,), _labs),
        StreamMap("users", (LabMember,), _users),
        StreamMap("projects", (Project,), _projects),
        StreamMap("procedures", (ProcedureType,), _procedures),
        StreamMap("water_types", (WaterType,), _water_types),
        StreamMap("subjects", (Subject, SubjectProject), _subjects),
        StreamMap("sessions", (Session,), _sessions),
        StreamMap("weighings", (Weighing,), _weighings),
        StreamMap("water_administrations", (WaterAdministration,), _water_administrations),
        StreamMap("water_restrictions", (WaterRestriction,), _water_restrictions),
        StreamMap("surgeries", (Surgery,), _surgeries),
    )
}
