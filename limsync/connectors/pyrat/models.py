"""Source models of the PyRAT streams (contract: ``contracts/pyrat.md`` sections 5 and 6).

Field names are PyRAT's own, including its two spellings: animals say ``licence_*`` (British),
licenses and procedures say ``license_*`` (US). Unknown fields are allowed and kept, so a newer
server does not break validation. Datetimes are naive ISO strings on PyRAT and stay naive.

The per-animal child streams (weights, comments, procedures) yield one *bundle* per animal: the
animal's id and eartag plus the list of its items, keyed by ``(animalid, checkpoint)``. The
records PyRAT returns for ``animals/{eartag}/weights`` do not name their animal, and an animal's
items can only be listed whole, so the bundle is the unit of change: when an item disappears the
engine drops the row it used to produce. A bundle with a non-empty ``checkpoint`` carries no
items; it records which state of the animal the items were last read at (see
:mod:`limsync.connectors.pyrat.children`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class PyratRecord(BaseModel):
    """Base of the PyRAT source models: extra fields allowed and kept."""

    model_config = ConfigDict(extra="allow")


class Mutation(PyratRecord):
    """One entry of an animal's ``mutations`` list."""

    mutation_id: int
    mutationname: str
    grade_id: int | None = None
    mutationgrade: str | None = None


class Parent(PyratRecord):
    """One entry of an animal's ``parents`` list (there may be more than two)."""

    parent_id: int
    parent_eartag: str | None = None
    parent_sex: str | None = None


class ProjectRef(PyratRecord):
    """One entry of an animal's ``projects`` list."""

    project_label: str


class Animal(PyratRecord):
    """``GET /animals``: keyed by ``animalid``; ``eartag_or_id`` is not unique."""

    animalid: int
    eartag_or_id: str
    labid: str | None = None
    state: Literal["live", "sacrificed", "exported"]
    sex: Literal["m", "f", "?"] | None = None
    dateborn: datetime | None = None
    datesacrificed: datetime | None = None
    sacrifice_reason_name: str | None = None
    sacrifice_comment: str | None = None
    species_name: str | None = None
    strain_id: int | None = None
    strain_name: str | None = None
    generation: str | None = None
    mutations: list[Mutation] = []
    parents: list[Parent] = []
    cagenumber: str | None = None
    room_name: str | None = None
    building_name: str | None = None
    responsible_id: int | None = None
    responsible_fullname: str | None = None
    owner_fullname: str | None = None
    licence_id: int | None = None
    licence_number: str | None = None
    licence_title: str | None = None
    projects: list[ProjectRef] = []
    weight: float | None = None
    date_last_comment: datetime | None = None
    age_days: int | None = None
    age_weeks: int | None = None


class Pup(PyratRecord):
    """``GET /pups``: unweaned pups, keyed by ``pupid``."""

    pupid: int
    eartag_or_id: str | None = None
    sex: Literal["m", "f", "?"] | None = None
    dateborn: datetime | None = None
    strain_id: int | None = None
    strain_name: str | None = None
    mutations: list[Mutation] = []
    parents: list[Parent] = []
    age_days: int | None = None


class Strain(PyratRecord):
    """``GET /strains``: lines; ``active`` is 0 or 1."""

    id: int
    name: str
    official_name: str | None = None
    active: int | bool | None = None


class User(PyratRecord):
    """``GET /users``."""

    userid: int
    username: str
    fullname: str | None = None


class Project(PyratRecord):
    """``GET /projects``; animals name projects by label (= ``name``)."""

    id: int
    name: str
    status: str | None = None


class License(PyratRecord):
    """``GET /licenses`` (US spelling, unlike the animals' ``licence_*`` fields)."""

    license_id: int
    license_number: str


class Weight(PyratRecord):
    """One item of ``animals/{eartag}/weights``."""

    weight_id: int
    weight: float
    weight_time: datetime
    actor_name: str | None = None


class Comment(PyratRecord):
    """One item of ``animals/{eartag}/comments``."""

    comment_id: int
    created: datetime
    creator_id: int | None = None
    creator_username: str | None = None
    creator_fullname: str | None = None
    origin: str | None = None
    content: str | None = None
    attributes: list[dict[str, Any]] = []


class Procedure(PyratRecord):
    """One item of ``animals/{eartag}/procedures``."""

    assign_id: int
    procedure_id: int
    procedure_name: str
    procedure_date: date | None = None
    license_id: int | None = None
    license_number: str | None = None
    classification_id: int | None = None
    classification_name: str | None = None
    actor_fullname: str | None = None
    comment: str | None = None


class _Bundle(PyratRecord):
    animalid: int
    checkpoint: str
    """Empty for the bundle of items; the animal's fingerprint for a checkpoint record."""
    eartag_or_id: str | None = None


class AnimalWeights(_Bundle):
    """All weights of one animal (or, with ``checkpoint``, a checkpoint record)."""

    items: list[Weight] = []


class AnimalComments(_Bundle):
    """All comments of one animal (or, with ``checkpoint``, a checkpoint record)."""

    items: list[Comment] = []


class AnimalProcedures(_Bundle):
    """All procedures of one animal (or, with ``checkpoint``, a checkpoint record)."""

    items: list[Procedure] = []
