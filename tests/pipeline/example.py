"""A small IBL-like pipeline shared by the pipeline tests.

Two schemas, so that cross-schema foreign keys are exercised: ``subject`` holds the ``Lab``
lookup and ``Subject``; ``acquisition`` holds ``Session`` (with its ``Session.Probe`` part) and the
computed ``SessionStats``. Between them the tables use every column type limsync declares.
Helpers build valid rows, so tests only spell out what they are about.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from limsync.pipeline import Computed, Key, Lookup, Manual, Part, Ref, Schema, SqlType

subject_schema = Schema("subject", comment="subjects and labs")
acquisition = Schema("acquisition", comment="sessions and what is computed from them")

SCHEMAS = (subject_schema, acquisition)


class Projection(enum.Enum):
    """An enum.Enum column type (stored as its values)."""

    LEFT = "left"
    RIGHT = "right"


class Lab(Lookup):
    """Laboratories that own subjects"""

    __schema__ = subject_schema
    lab_name: Annotated[str, Key, Field(max_length=32, description="short lab name")]
    institution: str = ""
    timezone: Annotated[str, Field(max_length=64)] = "UTC"


class Subject(Manual):
    """Experimental subject (synced from the LIMS)"""

    __schema__ = subject_schema
    __references__ = (Lab,)
    subject_uuid: Annotated[uuid.UUID, Key, Field(description="LIMS id")]
    nickname: Annotated[str, Field(max_length=64, description="LIMS nickname")]
    sex: Literal["M", "F", "U"] = "U"
    birth_date: dt.date | None = None
    weight: Annotated[Decimal, Field(max_digits=6, decimal_places=2)] | None = None
    alive: bool = True
    json_extra: dict[str, Any] | None = None


class Session(Manual):
    """Recording session"""

    __schema__ = acquisition
    # The lab a session ran in may differ from the subject's lab, and may be unknown.
    __references__ = (Ref(Subject, key=True), Ref(Lab, nullable=True))
    session_start: Annotated[dt.datetime, Key]
    session_uuid: uuid.UUID
    n_trials: Annotated[int, SqlType("int32")] | None = None
    task_protocol: str | None = None
    qc: Literal["NOT_SET", "PASS", "WARNING", "FAIL"] = "NOT_SET"
    extended_qc: dict[str, Any] | None = None
    trace: np.ndarray | None = None
    end_time: Annotated[dt.datetime, SqlType("datetime(3)")] | None = None
    rig_temperature: Annotated[float, SqlType("float32")] | None = None

    class Probe(Part):
        """Probe insertion of a session"""

        probe_name: Annotated[str, Key, Field(max_length=16)]
        probe_uuid: uuid.UUID
        projection: Projection = Projection.LEFT
        depth_um: float | None = None
        raw_header: bytes | None = None
        n_channels: Annotated[int, SqlType("int16")] = 384


class SessionStats(Computed):
    """Per-session summary computed from the trace"""

    __schema__ = acquisition
    __references__ = (Ref(Session, key=True),)
    mean_trace: float
    n_samples: Annotated[int, SqlType("int32")]


TABLES = (Lab, Subject, Session, Session.Probe, SessionStats)

LAB = {"lab_name": "cortexlab", "institution": "UCL", "timezone": "Europe/London"}


def subject_row(n: int, **over: Any) -> dict[str, Any]:
    """A valid Subject row, deterministic in ``n``."""
    row: dict[str, Any] = {
        "subject_uuid": uuid.UUID(int=n + 1),
        "lab_name": LAB["lab_name"],
        "nickname": f"SW{n:03d}",
        "sex": ("M", "F", "U")[n % 3],
        "birth_date": dt.date(2023, 1, 1) + dt.timedelta(days=n),
        "weight": Decimal("20.50") + n,
        "alive": n % 2 == 0,
        "json_extra": {"cage": f"C{n}", "tags": [n, "x"], "nested": {"ok": True}},
    }
    row.update(over)
    return row


def session_row(subject: int, n: int, **over: Any) -> dict[str, Any]:
    """A valid Session row of subject ``subject``."""
    row: dict[str, Any] = {
        "subject_uuid": uuid.UUID(int=subject + 1),
        "session_start": dt.datetime(2024, 3, 1, 9, 30, 15, 123456) + dt.timedelta(days=n),
        "session_uuid": uuid.UUID(int=(subject + 1) * 1000 + n),
        "lab_name": None,
        "n_trials": 400 + n,
        "task_protocol": "_iblrig_tasks_ephysChoiceWorld6.4.2",
        "qc": "PASS",
        "extended_qc": {"_task_stimOn_goCue_delays": 0.9, "passed": [1, 2]},
        "trace": np.linspace(0.0, 1.0, 16) * (n + 1),
        "end_time": dt.datetime(2024, 3, 1, 10, 45, 0, 250000) + dt.timedelta(days=n),
        "rig_temperature": 21.5,
    }
    row.update(over)
    return row


def probe_row(subject: int, session: int, name: str, **over: Any) -> dict[str, Any]:
    """A valid Session.Probe row."""
    parent = session_row(subject, session)
    row: dict[str, Any] = {
        "subject_uuid": parent["subject_uuid"],
        "session_start": parent["session_start"],
        "probe_name": name,
        "probe_uuid": uuid.uuid5(uuid.NAMESPACE_URL, f"{subject}/{session}/{name}"),
        "projection": Projection.RIGHT,
        "depth_um": 3840.0,
        "raw_header": b"\x00\x01binary\xff",
        "n_channels": 384,
    }
    row.update(over)
    return row
