"""Computed and Imported tables: ``make(key)``, ``populate``, change-driven recompute, workers.

Modules: :mod:`.keys` (key texts, key sources, restricted reads), :mod:`.jobs` (the job table
and its reservations), :mod:`.worker` (claim, make, write a chunk), :mod:`.outbox` (changed
upstream keys to affected derived keys), :mod:`.run` (populate, after_sync, worker processes,
backlog). See ``docs/populate.md``.
"""

from limsync.pipeline.populate.outbox import OutboxReport, process_outbox
from limsync.pipeline.populate.run import (
    PopulateReport,
    TableReport,
    after_sync,
    backlog,
    errors,
    load_tables,
    populate,
    refresh,
)

__all__ = [
    "OutboxReport",
    "PopulateReport",
    "TableReport",
    "after_sync",
    "backlog",
    "errors",
    "load_tables",
    "populate",
    "process_outbox",
    "refresh",
]
