"""Computed tables on top of the Alyx pipeline: a per-subject weight summary.

``WeightSummary`` is keyed by subject and reads the subject's weighings, which are not part of
its key: ``__depends_on__`` tells populate that a changed weighing makes its subject's summary
stale, and the ``Input`` part records which weighings were summarised, so a weighing deleted at
the source still names the summary to recompute. Enable it in ``limsync.toml``::

    [populate]
    tables = ["limsync.sync.maps.alyx_derived.WeightSummary"]
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from limsync.pipeline import Computed, Key, Part, Ref, Schema
from limsync.pipeline.tables import MakeResult
from limsync.sync.maps.alyx import Subject, Weighing

analysis = Schema("analysis", "computed from the synced tables")


class WeightSummary(Computed):
    """Per-subject weight summary, recomputed when the subject or its weighings change."""

    __schema__ = analysis
    __references__ = (Ref(Subject, key=True),)
    __depends_on__ = (Weighing,)
    n_weighings: int
    mean_weight: float | None = None
    last_weight: float | None = None
    last_weighed: dt.datetime | None = None

    class Input(Part):
        """The weighings a summary was computed from."""

        weighing_uuid: Annotated[uuid.UUID, Key]

    def make(self, key: dict[str, Any]) -> MakeResult:
        """Count, mean and latest of the subject's weighings."""
        weighings = sorted(self.fetch(Weighing, **key), key=lambda w: w["weighing_time"])
        weights = [w["weight"] for w in weighings]
        summary = {
            "n_weighings": len(weighings),
            "mean_weight": sum(weights) / len(weights) if weights else None,
            "last_weight": weights[-1] if weights else None,
            "last_weighed": weighings[-1]["weighing_time"] if weighings else None,
        }
        inputs = [(WeightSummary.Input, {"weighing_uuid": w["weighing_uuid"]}) for w in weighings]
        return [summary, *inputs]


SCHEMAS = (analysis,)
