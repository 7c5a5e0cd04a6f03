"""What a sync run did: per stream and per table counts, errors, timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from limsync.pipeline.upsert import ChangeSet

if TYPE_CHECKING:
    from limsync.pipeline.populate import PopulateReport


@dataclass
class StreamReport:
    """Counts for one stream of one run.

    Records: ``read`` from the source, ``new``/``changed``/``unchanged`` by content hash,
    ``quarantined`` (invalid, unmappable or unwritable), ``duplicates`` (seen twice in one scan),
    ``gone`` (confirmed missing at the source) and ``deleted`` (gone records whose rows were
    removed). Rows: per table ``inserted``/``updated``/``unchanged`` and ``deleted_rows``.
    """

    stream: str
    read: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    quarantined: int = 0
    duplicates: int = 0
    gone: int = 0
    deleted: int = 0
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    deleted_rows: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def add_table(self, cs: ChangeSet) -> None:
        """Add a table's ChangeSet to the row counts."""
        counts = self.tables.setdefault(cs.table, {"inserted": 0, "updated": 0, "unchanged": 0})
        for k, v in cs.counts().items():
            counts[k] += v

    @property
    def rows_written(self) -> int:
        """Rows inserted or updated in every table."""
        return sum(c["inserted"] + c["updated"] for c in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "stream": self.stream, "read": self.read, "new": self.new, "changed": self.changed,
            "unchanged": self.unchanged, "quarantined": self.quarantined,
            "duplicates": self.duplicates, "gone": self.gone, "deleted": self.deleted,
            "tables": self.tables, "deleted_rows": self.deleted_rows, "error": self.error,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


@dataclass
class SyncReport:
    """Everything one run of one connector did.

    ``populate`` is what the after-sync populate (``[populate] after_sync``) recomputed and
    made. It runs once, after every selected connector, so it is set on the last report of
    the call; it stays None when populate is not configured or nothing ran.
    """

    connector: str
    mode: str
    dry_run: bool = False
    run_id: int = 0
    streams: list[StreamReport] = field(default_factory=list)
    error: str | None = None  # the run as a whole (e.g. the lock was held)
    skipped: bool = False
    populate: PopulateReport | None = None

    @property
    def ok(self) -> bool:
        """True when the run and every stream succeeded."""
        return self.error is None and all(s.error is None for s in self.streams)

    def first_error(self) -> str | None:
        """The run's error, or the first stream's."""
        if self.error:
            return self.error
        return next((f"{s.stream}: {s.error}" for s in self.streams if s.error), None)

    def counts(self) -> dict[str, Any]:
        """Totals over the streams, and per stream, as stored in the run log."""
        keys = ("read", "new", "changed", "unchanged", "quarantined", "gone", "deleted")
        total = {k: sum(getattr(s, k) for s in self.streams) for k in keys}
        total["inserted"] = sum(c["inserted"] for s in self.streams for c in s.tables.values())
        total["updated"] = sum(c["updated"] for s in self.streams for c in s.tables.values())
        return {**total, "streams": {s.stream: s.to_dict() for s in self.streams}}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``--json`` output)."""
        return {
            "connector": self.connector, "mode": self.mode, "dry_run": self.dry_run,
            "run_id": self.run_id, "ok": self.ok, "error": self.error, "skipped": self.skipped,
            "totals": {k: v for k, v in self.counts().items() if k != "streams"},
            "streams": [s.to_dict() for s in self.streams],
            "populate": self.populate.to_dict() if self.populate is not None else None,
        }  # fmt: skip
