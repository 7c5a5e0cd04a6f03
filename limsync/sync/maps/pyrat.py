"""The default element-animal-style pipeline for PyRAT, and how each PyRAT stream maps into it.

Schemas and tables (DataJoint names in brackets); the schema names differ from the Alyx map's
(``reference``, ``subject``, ...) so that one database can hold both::

    animal      User [user], Protocol [protocol], Project [project], Line [line],
                Subject [subject], SubjectDeath [subject_death], SubjectProject [subject_project],
                Pup [pup], SubjectWeight [subject_weight], SubjectProcedure [subject_procedure],
                SubjectComment [subject_comment]
    genotyping  Allele [allele], SubjectGenotype [subject_genotype], SubjectParent [subject_parent]

Subjects are keyed by PyRAT's ``animalid`` (``animal_id``): eartags repeat. The eartag is the
``subject`` column, 64 characters wide (element-animal's 8 are too few for ``CBR1-05823``-style
tags). Sex ``f``/``m``/``?`` becomes ``F``/``M``/``U``; mutation grades become zygosities
(``wt`` Absent, ``het`` Heterozygous, ``hom`` Homozygous; ``+/+``, ``+/-``, ``-/-`` likewise;
anything else keeps its grade with no zygosity). A sacrificed animal gets a SubjectDeath row
with the cull reason. Alleles come from their own stream (the distinct mutations of all
animals), never from one animal's record, so that deleting an animal cannot delete a row other
animals' genotypes refer to.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import Field

from limsync.pipeline import Key, Manual, Ref, Schema, SqlType
from limsync.sync.mapping import Emitted, StreamMap

animal = Schema("animal", "PyRAT animals, lines, people, licences and histories")
genotyping = Schema("genotyping", "PyRAT alleles, genotypes and parentage")

Name = Annotated[str, Field(max_length=255)]
Short = Annotated[str, Field(max_length=64)]
Text = Annotated[str, SqlType("text")]
Zygosity = Literal["Present", "Absent", "Homozygous", "Heterozygous"]

SEX = {"f": "F", "m": "M", "?": "U"}
ZYGOSITY: dict[str, Zygosity] = {
    "wt": "Absent", "+/+": "Absent", "het": "Heterozygous", "+/-": "Heterozygous",
    "-/+": "Heterozygous", "hom": "Homozygous", "-/-": "Homozygous",
}  # fmt: skip


class User(Manual):
    """A PyRAT user."""

    __schema__ = animal
    user_id: Annotated[int, Key]
    username: Annotated[str, Field(max_length=150)]
    fullname: Name | None = None


class Protocol(Manual):
    """An animal licence (PyRAT ``licenses``)."""

    __schema__ = animal
    protocol_id: Annotated[int, Key]
    protocol: Name = Field(description="licence number")


class Project(Manual):
    """A PyRAT project; animals name it by label."""

    __schema__ = animal
    project_name: Annotated[str, Key, Field(max_length=255)]
    project_id: int
    project_status: Short | None = None


class Line(Manual):
    """A line (PyRAT strain)."""

    __schema__ = animal
    line_id: Annotated[int, Key]
    line_name: Name
    official_name: Name | None = None
    is_active: bool | None = None


class Subject(Manual):
    """An animal, keyed by PyRAT's animalid."""

    __schema__ = animal
    __references__ = (Ref(Line, nullable=True), Ref(Protocol, nullable=True))
    animal_id: Annotated[int, Key]
    subject: Short = Field(description="eartag or id (not unique)")
    subject_alias: Short | None = Field(None, description="PyRAT labid")
    sex: Literal["M", "F", "U"] = "U"
    subject_birth_date: dt.date | None = None
    state: Annotated[str, Field(max_length=16)]
    species: Short | None = None
    generation: Short | None = None
    cage: Short | None = None
    room: Short | None = None
    building: Short | None = None
    responsible_id: int | None = None
    responsible_fullname: Name | None = None
    owner_fullname: Name | None = None
    licence_title: Name | None = None


class SubjectDeath(Manual):
    """When and why an animal was sacrificed."""

    __schema__ = animal
    __references__ = (Ref(Subject, key=True),)
    death_date: dt.date | None = None
    cull_reason: Name | None = None
    cull_comment: Text | None = None


class SubjectProject(Manual):
    """Which projects an animal belongs to."""

    __schema__ = animal
    __references__ = (Ref(Subject, key=True), Ref(Project, key=True))


class Pup(Manual):
    """An unweaned pup (PyRAT ``pups``)."""

    __schema__ = animal
    __references__ = (Ref(Line, nullable=True),)
    pup_id: Annotated[int, Key]
    subject: Short | None = None
    sex: Literal["M", "F", "U"] = "U"
    pup_birth_date: dt.date | None = None
    parent_ids: list[int] | None = None


class SubjectWeight(Manual):
    """A weighing."""

    __schema__ = animal
    __references__ = (Ref(Subject, key=True),)
    weight_id: Annotated[int, Key]
    weight: float = Field(description="grams")
    weight_time: dt.datetime
    actor_name: Name | None = None


class SubjectProcedure(Manual):
    """A procedure performed on an animal (the licence in PyRAT's ``license_*`` spelling)."""

    __schema__ = animal
    __references__ = (Ref(Subject, key=True),)
    assign_id: Annotated[int, Key]
    procedure_id: int
    procedure_name: Name
    procedure_date: dt.date | None = None
    license_id: int | None = None
    license_number: Name | None = None
    classification_name: Name | None = None
    actor_fullname: Name | None = None
    procedure_comment: Text | None = None


class SubjectComment(Manual):
    """A comment on an animal; structured comments keep their attributes."""

    __schema__ = animal
    __references__ = (Ref(Subject, key=True),)
    comment_id: Annotated[int, Key]
    created: dt.datetime
    creator_username: Annotated[str, Field(max_length=150)] | None = None
    creator_fullname: Name | None = None
    origin: Short | None = None
    content: Text | None = None
    attributes: list[dict[str, Any]] | None = None


class Allele(Manual):
    """A mutation (PyRAT mutation id and name)."""

    __schema__ = genotyping
    allele_id: Annotated[int, Key]
    allele_name: Name


class SubjectGenotype(Manual):
    """An animal's grade for one allele."""

    __schema__ = genotyping
    __references__ = (Ref(Subject, key=True), Ref(Allele, key=True))
    zygosity: Zygosity | None = None
    genotype: Short | None = Field(None, description="PyRAT grade as sent")


class SubjectParent(Manual):
    """One parent of an animal (PyRAT allows more than two)."""

    __schema__ = genotyping
    __references__ = (Ref(Subject, key=True),)
    parent_id: Annotated[int, Key] = Field(description="the parent's animalid")
    parent_eartag: Short | None = None
    parent_sex: Literal["M", "F", "U"] = "U"


SCHEMAS = (animal, genotyping)


def _date(value: dt.datetime | dt.date | None) -> dt.date | None:
    return value.date() if isinstance(value, dt.datetime) else value


def _strains(rec: Any) -> Iterable[Emitted]:
    active = None if rec.active is None else bool(rec.active)
    yield Line, {
        "line_id": rec.id, "line_name": rec.name, "official_name": rec.official_name,
        "is_active": active,
    }  # fmt: skip


def _users(rec: Any) -> Iterable[Emitted]:
    yield User, {"user_id": rec.userid, "username": rec.username, "fullname": rec.fullname}


def _projects(rec: Any) -> Iterable[Emitted]:
    yield Project, {"project_name": rec.name, "project_id": rec.id, "project_status": rec.status}


def _licenses(rec: Any) -> Iterable[Emitted]:
    yield Protocol, {"protocol_id": rec.license_id, "protocol": rec.license_number}


def _alleles(rec: Any) -> Iterable[Emitted]:
    yield Allele, {"allele_id": rec.mutation_id, "allele_name": rec.mutationname}


def _animals(rec: Any) -> Iterable[Emitted]:
    key = {"animal_id": rec.animalid}
    yield Subject, {
        **key, "subject": rec.eartag_or_id, "subject_alias": rec.labid,
        "sex": SEX.get(rec.sex or "?", "U"), "subject_birth_date": _date(rec.dateborn),
        "state": rec.state, "species": rec.species_name, "generation": rec.generation,
        "cage": rec.cagenumber, "room": rec.room_name, "building": rec.building_name,
        "responsible_id": rec.responsible_id, "responsible_fullname": rec.responsible_fullname,
        "owner_fullname": rec.owner_fullname, "licence_title": rec.licence_title,
        "line_id": rec.strain_id, "protocol_id": rec.licence_id,
    }  # fmt: skip
    if rec.state == "sacrificed" or rec.datesacrificed is not None:
        yield SubjectDeath, {
            **key, "death_date": _date(rec.datesacrificed),
            "cull_reason": rec.sacrifice_reason_name, "cull_comment": rec.sacrifice_comment,
        }  # fmt: skip
    for label in sorted({p.project_label for p in rec.projects}):
        yield SubjectProject, {**key, "project_name": label}
    for mutation in {m.mutation_id: m for m in rec.mutations}.values():
        grade = mutation.mutationgrade
        yield SubjectGenotype, {
            **key, "allele_id": mutation.mutation_id, "genotype": grade,
            "zygosity": ZYGOSITY.get((grade or "").strip().lower()),
        }  # fmt: skip
    for parent in {p.parent_id: p for p in rec.parents}.values():
        yield SubjectParent, {
            **key, "parent_id": parent.parent_id, "parent_eartag": parent.parent_eartag,
            "parent_sex": SEX.get(parent.parent_sex or "?", "U"),
        }  # fmt: skip


def _pups(rec: Any) -> Iterable[Emitted]:
    yield Pup, {
        "pup_id": rec.pupid, "subject": rec.eartag_or_id, "sex": SEX.get(rec.sex or "?", "U"),
        "pup_birth_date": _date(rec.dateborn), "line_id": rec.strain_id,
        "parent_ids": sorted({p.parent_id for p in rec.parents}) or None,
    }  # fmt: skip


def _weights(rec: Any) -> Iterable[Emitted]:
    if rec.checkpoint:
        return  # a checkpoint record only lands in the ledger
    for w in rec.items:
        yield SubjectWeight, {
            "animal_id": rec.animalid, "weight_id": w.weight_id, "weight": w.weight,
            "weight_time": w.weight_time, "actor_name": w.actor_name,
        }  # fmt: skip


def _procedures(rec: Any) -> Iterable[Emitted]:
    if rec.checkpoint:
        return
    for p in rec.items:
        yield SubjectProcedure, {
            "animal_id": rec.animalid, "assign_id": p.assign_id, "procedure_id": p.procedure_id,
            "procedure_name": p.procedure_name, "procedure_date": p.procedure_date,
            "license_id": p.license_id, "license_number": p.license_number,
            "classification_name": p.classification_name, "actor_fullname": p.actor_fullname,
            "procedure_comment": p.comment,
        }  # fmt: skip


def _comments(rec: Any) -> Iterable[Emitted]:
    if rec.checkpoint:
        return
    for c in rec.items:
        yield SubjectComment, {
            "animal_id": rec.animalid, "comment_id": c.comment_id, "created": c.created,
            "creator_username": c.creator_username, "creator_fullname": c.creator_fullname,
            "origin": c.origin, "content": c.content, "attributes": c.attributes or None,
        }  # fmt: skip


STREAM_MAPS = {
    m.stream: m
    for m in (
        StreamMap("strains", (Line,), _strains),
        StreamMap("users", (User,), _users),
        StreamMap("projects", (Project,), _projects),
        StreamMap("licenses", (Protocol,), _licenses),
        StreamMap("alleles", (Allele,), _alleles),
        StreamMap(
            "animals",
            (Subject, SubjectDeath, SubjectProject, SubjectGenotype, SubjectParent),
            _animals,
        ),
        StreamMap("pups", (Pup,), _pups),
        StreamMap("weights", (SubjectWeight,), _weights),
        StreamMap("comments", (SubjectComment,), _comments),
        StreamMap("procedures", (SubjectProcedure,), _procedures),
    )
}
