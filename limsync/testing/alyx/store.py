"""The fake Alyx's record store: tables, indexes, a clock, ordering and cached queries.

:class:`Store` keeps records (see :mod:`limsync.testing.alyx.models`) with the indexes the fake
server needs to answer quickly: children per subject, subjects per nickname and per responsible
user, water administrations per session. Endpoint orders are computed lazily and cached, like
query results, until the next change. :class:`~limsync.testing.alyx.colony.Colony` adds the
generator and the mutation API on top.
"""

from __future__ import annotations

import copy
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from limsync.testing.alyx.models import (
    KIND_ALIASES,
    RECORD_TYPES,
    SUBJECT_CHILDREN,
    Field,
    Subject,
    canon_datetime,
)

__all__ = ["DEFAULT_TODAY", "Hint", "Query", "Store", "new_id"]

DEFAULT_TODAY = date(2026, 11, 24)

_NAMED_KINDS = ("lab", "user", "project", "procedure", "watertype", "location")
_NAME_ATTR = {"user": "username"}
_UNORDERED = ("weighing", "wateradmin", "lab", "project", "procedure")
"""Kinds Alyx lists without ORDER BY: the fake shuffles them, anew after every change."""
_QUERY_CACHE_SIZE = 16


@dataclass(frozen=True)
class Hint:
    """A shortcut to candidate records instead of a full scan: by ``id``, ``subject`` id or
    lower-case subject ``nickname``. The query's tests still run on every candidate."""

    by: str
    values: frozenset[str]


@dataclass(frozen=True)
class Query:
    """A compiled list query: every test must pass; ``key`` identifies it for caching."""

    kind: str
    tests: tuple[Callable[[Any], bool], ...]
    hint: Hint | None
    key: Hashable


def new_id(rng: random.Random) -> str:
    """A random (version 4) UUID string drawn from ``rng``, so ids are reproducible."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Store:
    """Records of every kind with their indexes, safe to use from any thread under ``lock``.

    ``today`` drives the computed subject fields (``age_weeks``, water control) and ``now``
    (default: 09:00 on ``today``) stamps changes (``auto_datetime``, ``json.history``); the clock
    advances by ``clock_step`` after each stamp so successive changes are strictly ordered.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        today: date = DEFAULT_TODAY,
        now: datetime | None = None,
        clock_step: timedelta = timedelta(seconds=1),
    ) -> None:
        self.lock = threading.RLock()
        self.seed = seed
        self.clock_step = clock_step
        self.rng = random.Random(f"alyx-colony-{seed}")
        self._today = today
        self._now = now if now is not None else datetime.combine(today, time(9))
        self._revision = 0
        self._tables: dict[str, dict[str, Any]] = {kind: {} for kind in RECORD_TYPES}
        self._names: dict[str, dict[str, str]] = {kind: {} for kind in _NAMED_KINDS}
        # Lists, not sets: iteration order must not depend on string hashing, and these
        # per-parent groups are small (a list costs far less memory than a dict for 20k of them).
        self._children: dict[str, dict[str, list[str]]] = {k: {} for k in SUBJECT_CHILDREN}
        self._session_admins: dict[str, list[str]] = {}
        self._nicknames: dict[str, list[str]] = {}
        self._responsible: dict[str, dict[str, None]] = {}  # large groups: O(1) removal
        self._orders: dict[str, list[Any]] = {}
        self._ranks: dict[str, dict[str, int]] = {}
        self._queries: OrderedDict[Hashable, list[Any]] = OrderedDict()

    # --- clock and revision -----------------------------------------------------------------------

    @property
    def today(self) -> date:
        """The date computed fields are evaluated at."""
        return self._today

    @today.setter
    def today(self, value: date) -> None:
        with self.lock:
            self._today = value
            self._changed()

    @property
    def now(self) -> datetime:
        """The time the next change is stamped with."""
        return self._now

    @now.setter
    def now(self, value: datetime) -> None:
        with self.lock:
            self._now = value

    def tick(self) -> str:
        """The current clock value as Alyx renders it; then the clock advances by one step."""
        with self.lock:
            stamp = self._now
            self._now = stamp + self.clock_step
            return canon_datetime(stamp)

    @property
    def revision(self) -> int:
        """Increases on every change of data or of ``today``."""
        return self._revision

    def _changed(self) -> None:
        self._revision += 1
        self._orders.clear()
        self._ranks.clear()
        self._queries.clear()

    # --- reading ----------------------------------------------------------------------------------

    def table(self, kind: str) -> dict[str, Any]:
        """The live records of one kind by id (read under ``lock``; do not modify).

        Kinds: ``lab user project procedure watertype location subject session weighing
        wateradmin waterrestriction surgery``, or their endpoint names (``"subjects"``...).
        """
        return self._tables[KIND_ALIASES.get(kind, kind)]

    def count(self, kind: str) -> int:
        """How many records of ``kind`` exist."""
        return len(self.table(kind))

    def ids(self, kind: str) -> list[str]:
        """Ids of every record of ``kind``, in insertion order."""
        with self.lock:
            return list(self.table(kind))

    def record(self, kind: str, record_id: str) -> Any:
        """A copy of one record (``KeyError`` if absent)."""
        with self.lock:
            return copy.copy(self.table(kind)[record_id])

    def id_of(self, kind: str, name: str) -> str:
        """The id of a named record (lab, user by username, project, procedure, water type...)."""
        try:
            return self._names[kind][name]
        except KeyError:
            raise ValueError(f"no {kind} named {name!r}") from None

    def children(self, kind: str, subject_id: str) -> list[Any]:
        """A subject's sessions, weighings, water administrations, restrictions or surgeries."""
        table = self._tables[kind]
        return [table[i] for i in self._children[kind].get(subject_id, ())]

    def subjects_named(self, nickname: str) -> list[Subject]:
        """Subjects with exactly this nickname (nicknames are unique per lab only)."""
        table = self._tables["subject"]
        found = (table[i] for i in self._nicknames.get(nickname.lower(), ()))
        return [s for s in found if s.nickname == nickname]

    def reverse(self, kind: str, attr: str, parent_id: str) -> list[Any]:
        """Records of ``kind`` whose ``attr`` points at ``parent_id`` (a reverse relation)."""
        if attr == "subject" and kind in SUBJECT_CHILDREN:
            return self.children(kind, parent_id)
        if kind == "wateradmin" and attr == "session":
            table = self._tables[kind]
            return [table[i] for i in self._session_admins.get(parent_id, ())]
        if kind == "subject" and attr == "responsible_user":
            table = self._tables[kind]
            return [table[i] for i in self._responsible.get(parent_id, ())]
        return [r for r in self._tables[kind].values() if getattr(r, attr, None) == parent_id]

    def related(self, spec: Field, record: Any, name: str) -> list[Any]:
        """Records that field ``name`` (described by ``spec``) of ``record`` leads to."""
        target = self._tables[spec.target]
        if spec.type == "fk":
            found = target.get(getattr(record, name))
            return [] if found is None else [found]
        if spec.type == "m2m":
            return [target[i] for i in getattr(record, name) if i in target]
        return self.reverse(spec.target, spec.attr, record.id)

    # --- ordering and queries ---------------------------------------------------------------------

    def ordered(self, kind: str) -> list[Any]:
        """All records of ``kind`` in the endpoint's order (cached until the next change)."""
        with self.lock:
            rows = self._orders.get(kind)
            if rows is None:
                rows = self._orders[kind] = self._sort(kind)
            return rows

    def _rank(self, kind: str) -> dict[str, int]:
        """Each id's position in :meth:`ordered`, to put a subset in the endpoint's order."""
        rank = self._ranks.get(kind)
        if rank is None:
            rank = self._ranks[kind] = {r.id: i for i, r in enumerate(self.ordered(kind))}
        return rank

    def _sort(self, kind: str) -> list[Any]:
        rows = list(self._tables[kind].values())
        if kind in _UNORDERED:
            # Postgres returns rows without ORDER BY in no guaranteed order; the fake makes that
            # visible: a stable order while nothing changes, a new one after any change.
            random.Random(f"{self.seed}-{kind}-{self._revision}").shuffle(rows)
            return rows
        if kind not in ("subject", "session", "surgery", "user", "waterrestriction"):
            return rows  # insertion order (water types, locations)
        rows.sort(key=lambda r: r.id)  # a deterministic tie-break under the stable sorts below
        if kind == "subject":  # nickname, -birth_date (NULLs first when descending)
            rows.sort(key=lambda r: r.birth_date or "9999", reverse=True)
            rows.sort(key=lambda r: r.nickname)
        elif kind == "user":
            rows.sort(key=lambda r: r.username)
        elif kind == "waterrestriction":  # -end_time, -start_time
            rows.sort(key=lambda r: (r.end_time or "9999", r.start_time), reverse=True)
        else:  # sessions and surgeries: -start_time
            rows.sort(key=lambda r: r.start_time, reverse=True)
        return rows

    def select(self, query: Query) -> list[Any]:
        """Records matching ``query`` in the endpoint's order; cached until the next change."""
        with self.lock:
            key = (query.kind, query.key)
            cached = self._queries.get(key)
            if cached is not None:
                self._queries.move_to_end(key)
                return cached
            if query.hint is None:
                rows = self.ordered(query.kind)
            else:
                rank = self._rank(query.kind)
                rows = sorted(self._candidates(query.kind, query.hint), key=lambda r: rank[r.id])
            for test in query.tests:
                rows = [r for r in rows if test(r)]
            self._queries[key] = rows
            if len(self._queries) > _QUERY_CACHE_SIZE:
                self._queries.popitem(last=False)
            return rows

    def _candidates(self, kind: str, hint: Hint) -> list[Any]:
        table = self._tables[kind]
        if hint.by == "id":
            return [table[i] for i in hint.values if i in table]
        if hint.by == "nickname":
            subject_ids = [s for n in hint.values for s in self._nicknames.get(n, ())]
        else:
            subject_ids = list(hint.values)
        unique = dict.fromkeys(subject_ids)
        if kind == "subject":
            return [table[i] for i in unique if i in table]
        if kind in SUBJECT_CHILDREN:
            return [r for s in unique for r in self.children(kind, s)]
        return list(table.values())

    # --- low-level insert and remove (indexes) ----------------------------------------------------

    def insert(self, kind: str, record: Any) -> None:
        """Store a new record and index it (no validation: generators and mutations use it)."""
        self._tables[kind][record.id] = record
        self._index(kind, record)

    def _remove(self, kind: str, record_id: str) -> Any:
        record = self._tables[kind].pop(record_id)
        self._unindex(kind, record)
        return record

    def _reindexed(self, kind: str, record: Any, changes: dict[str, Any]) -> None:
        """Apply ``changes`` to a stored record (it keeps its place), keeping indexes right."""
        self._unindex(kind, record)
        for name, value in changes.items():
            setattr(record, name, value)
        self._index(kind, record)

    def _index(self, kind: str, record: Any) -> None:
        if kind in _NAMED_KINDS:
            self._names[kind][getattr(record, _NAME_ATTR.get(kind, "name"))] = record.id
        elif kind == "subject":
            self._nicknames.setdefault(record.nickname.lower(), []).append(record.id)
            self._responsible.setdefault(record.responsible_user, {})[record.id] = None
        if kind in SUBJECT_CHILDREN:
            self._children[kind].setdefault(record.subject, []).append(record.id)
        if kind == "wateradmin" and record.session:
            self._session_admins.setdefault(record.session, []).append(record.id)

    def _unindex(self, kind: str, record: Any) -> None:
        if kind in _NAMED_KINDS:
            self._names[kind].pop(getattr(record, _NAME_ATTR.get(kind, "name")), None)
        elif kind == "subject":
            self._nicknames[record.nickname.lower()].remove(record.id)
            self._responsible[record.responsible_user].pop(record.id, None)
        if kind in SUBJECT_CHILDREN:
            self._children[kind][record.subject].remove(record.id)
        if kind == "wateradmin" and record.session:
            self._session_admins[record.session].remove(record.id)
