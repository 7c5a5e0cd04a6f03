"""Where an upsert's record of the keys it has seen goes once it outgrows memory.

:class:`Spill` is a temporary SQLite file (one row per key, clustered by its 64-bit hash)
with a Bloom filter of the hashes it holds, so that the keys of later batches, which are mostly
new, rarely need to look in it. :class:`SpilledKeys` is the sequence a :class:`ChangeSet
<limsync.pipeline.changes.ChangeSet>` lists them through. Keys are written with marshal (see
:func:`dump_key`), several times faster than pickle for the types keys are made of.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import pickle
import sqlite3
import tempfile
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from itertools import chain, islice
from typing import Any, overload

import numpy as np

Key = tuple[Any, ...]


class SpilledKeys(Sequence[Key]):
    """Keys of one status, partly in a temporary file: a read-only sequence.

    It iterates in order of first appearance, has a length, is indexed (a position in the file
    is found by reading up to it) and compares equal to a list of the same keys. Once its
    :class:`ChangeSet` is closed it is empty.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable (extend), like a list

    def __init__(self, parts: Iterable[Stored | list[Key]]) -> None:
        self._parts: list[Stored | list[Key]] = [p for p in parts if len(p)]

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def __iter__(self) -> Iterator[Key]:
        return chain.from_iterable(self._parts)

    @overload
    def __getitem__(self, index: int) -> Key: ...

    @overload
    def __getitem__(self, index: slice) -> list[Key]: ...

    def __getitem__(self, index: int | slice) -> Key | list[Key]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return list(islice(self, start, max(start, stop)))
            return [self[i] for i in range(start, stop, step)]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError("SpilledKeys index out of range")
        for part in self._parts:
            if i < len(part):
                return part[i]
            i -= len(part)
        raise AssertionError("unreachable")  # pragma: no cover

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (SpilledKeys, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __repr__(self) -> str:
        n = len(self)
        shown = ", ".join(map(repr, islice(self, 3)))
        return f"SpilledKeys([{shown}{', ...' if n > 3 else ''}], len={n})"

    def extend(self, keys: Iterable[Key]) -> None:
        """Append keys: another SpilledKeys's stored parts are shared, not copied."""
        if isinstance(keys, SpilledKeys):
            self._parts.extend(keys._parts)
        else:
            self._parts.append(list(keys))

    def close(self) -> None:
        """Delete the temporary files this sequence reads (it is empty afterwards)."""
        for part in self._parts:
            if isinstance(part, Stored):
                part.spill.close()
        self._parts = []


# Keys are stored with marshal, which is several times faster than pickle for the types keys
# are made of: each value either as it is (the exact builtin types marshal round-trips) or
# tagged and reduced to builtins. Anything else (a str subclass, an aware datetime, ...) is
# pickled, so every key comes back as the same Python values. The file is private to this
# process (mkstemp: mode 0600) and read back by it alone, so unpickling it is safe.
_PLAIN = frozenset({int, str, bytes, float, bool, type(None)})


def dump_key(key: Key) -> bytes:
    if all(v.__class__ in _PLAIN for v in key):
        return marshal.dumps(("", *key))
    tags: list[str] = []
    values: list[Any] = []
    for v in key:
        cls = v.__class__
        if cls in _PLAIN:
            tags.append("=")
            values.append(v)
        elif cls is uuid.UUID:
            tags.append("u")
            values.append(v.int)
        elif cls is datetime and v.tzinfo is None:
            tags.append("t")
            values.append((v.year, v.month, v.day, v.hour, v.minute, v.second,
                           v.microsecond, v.fold))  # fmt: skip
        elif cls is date:
            tags.append("d")
            values.append(v.toordinal())
        elif cls is Decimal:
            tags.append("n")
            values.append(str(v))  # exact: digits, exponent and sign survive
        else:
            tags.append("p")
            values.append(pickle.dumps(v, pickle.HIGHEST_PROTOCOL))
    return marshal.dumps(("".join(tags), *values))


def dumper(keys: list[Key]) -> Callable[[Key], bytes]:
    """:func:`dump_key`, specialised for keys whose columns each hold values of one type.

    Keys of one table nearly always are (validated values), and then each key costs a tuple
    and one marshal call instead of a type test per value.
    """
    if not keys or len({len(k) for k in keys}) != 1:
        return dump_key
    tags: list[str] = []
    convert: list[Callable[[Any], Any] | None] = []
    for column in zip(*keys, strict=True):
        classes = {v.__class__ for v in column}
        cls = classes.pop() if len(classes) == 1 else None
        if cls in _PLAIN:
            tags.append("=")
            convert.append(None)
        elif cls is uuid.UUID:
            tags.append("u")
            convert.append(_uuid_int)
        elif cls is date:
            tags.append("d")
            convert.append(date.toordinal)
        elif cls is Decimal:
            tags.append("n")
            convert.append(str)
        else:  # mixed types, datetimes (aware or not), anything else
            return dump_key
    tag = "".join(tags)
    if all(c is None for c in convert):
        return lambda key: marshal.dumps((tag, *key))
    one = convert[0]
    if len(convert) == 1 and one is not None:
        return lambda key: marshal.dumps((tag, one(key[0])))
    steps = [(i, c) for i, c in enumerate(convert) if c is not None]

    def dump(key: Key) -> bytes:
        values = [tag, *key]
        for i, c in steps:
            values[i + 1] = c(values[i + 1])
        return marshal.dumps(tuple(values))

    return dump


def _uuid_int(v: uuid.UUID) -> int:
    return v.int


def load_key(data: bytes) -> Key:
    tags, *values = marshal.loads(data)
    if not tags:
        return tuple(values)
    return tuple(_LOADERS[t](v) for t, v in zip(tags, values, strict=True))


def _datetime(f: tuple[int, int, int, int, int, int, int, int]) -> datetime:
    return datetime(f[0], f[1], f[2], f[3], f[4], f[5], f[6], fold=f[7])


_LOADERS: dict[str, Callable[[Any], Any]] = {
    "=": lambda v: v,
    "u": lambda v: uuid.UUID(int=v),
    "t": _datetime,
    "d": date.fromordinal,
    "n": Decimal,
    "p": pickle.loads,
}

_BLOOM_BITS = 23  # 1 MiB of filter: ~2% false positives at a million spilled keys, 3 probes
_BLOOM_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64
)
_SLICE = 4096  # keys moved to the file at a time
_LOOKUP_CHUNK = 500  # hashes per SELECT: below SQLite's oldest bound on parameters (999)


def _discard(conn: sqlite3.Connection, path: str) -> None:
    conn.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Spill:
    """The temporary SQLite file of one upsert's spilled keys, and its Bloom filter of hashes.

    One row per key, ``(hash, position)`` its primary key (a clustered B-tree, ``WITHOUT
    ROWID``, so the lookup by hash needs no second index), inserted in hash order so that each
    spill walks the tree once. The file is deleted by :meth:`close`, or when the object is
    garbage-collected or the interpreter exits (:func:`weakref.finalize`).
    """

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="limsync-changes-", suffix=".sqlite3")
        os.close(fd)
        # Autocommit mode, transactions opened explicitly; used from whichever thread holds
        # the ChangeSet (and closed from the garbage collector's).
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._finalizer = weakref.finalize(self, _discard, self.conn, self.path)
        # A scratch file: no journal, no fsync, nobody else opens it.
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE"):
            self.conn.execute(f"PRAGMA {pragma}")
        self.conn.execute(
            "CREATE TABLE seen (h INTEGER NOT NULL, pos INTEGER NOT NULL, st INTEGER NOT NULL,"
            " bf INTEGER NOT NULL, key BLOB NOT NULL, PRIMARY KEY (h, pos)) WITHOUT ROWID"
        )
        self.counts = [0, 0, 0]  # spilled keys per status
        self._bloom = np.zeros(1 << (_BLOOM_BITS - 3), dtype=np.uint8)
        self._ordered = False

    @property
    def closed(self) -> bool:
        """True once the file is deleted."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the database and delete the file (idempotent)."""
        self._finalizer()

    def _conn(self) -> sqlite3.Connection:
        if self.closed:
            raise ValueError("the ChangeSet's spilled keys were closed")
        return self.conn

    @staticmethod
    def _bloom_bits(hashes: np.ndarray) -> np.ndarray:
        # Multiply-shift: the top bits of hash * odd constant, one probe per constant.
        with np.errstate(over="ignore"):
            mixed = hashes.astype(np.uint64)[:, None] * _BLOOM_MULTIPLIERS[None, :]
        return (mixed >> np.uint64(64 - _BLOOM_BITS)).astype(np.int64)

    def add(
        self,
        hashes: np.ndarray,
        positions: np.ndarray,
        statuses: np.ndarray,
        befores: np.ndarray,
        keys: Callable[[int, int], list[Key]],
        dump: Callable[[Key], bytes],
    ) -> None:
        """Store keys given sorted by hash; ``keys(start, stop)`` gives those of a slice."""
        for status, n in enumerate(np.bincount(statuses, minlength=3).tolist()):
            self.counts[status] += n

        def rows() -> Iterator[tuple[int, int, int, int, bytes]]:
            # A slice at a time, so that the Python objects of one slice only exist at once
            # (those of all the keys in memory would be as large again as the keys).
            for start in range(0, len(hashes), _SLICE):
                part = slice(start, start + _SLICE)
                bits = self._bloom_bits(hashes[part]).ravel()
                np.bitwise_or.at(self._bloom, bits >> 3, (1 << (bits & 7)).astype(np.uint8))
                yield from zip(
                    hashes[part].tolist(),
                    positions[part].tolist(),
                    statuses[part].tolist(),
                    befores[part].tolist(),
                    map(dump, keys(start, start + _SLICE)),
                    strict=True,
                )

        conn = self._conn()
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO seen VALUES (?, ?, ?, ?, ?)", rows())
        conn.execute("COMMIT")

    def maybe(self, hashes: np.ndarray) -> list[int]:
        """Indexes into ``hashes`` of those that may be stored (the others surely are not)."""
        bits = self._bloom_bits(hashes)
        present = (self._bloom[bits >> 3] >> (bits & 7).astype(np.uint8)) & 1
        return list(np.flatnonzero(present.all(axis=1)).tolist())

    def lookup(self, hashes: list[int]) -> list[tuple[int, int, int, int, Key]]:
        """(hash, position, status, before, key) of every stored key with one of ``hashes``."""
        conn = self._conn()
        out: list[tuple[int, int, int, int, Key]] = []
        for start in range(0, len(hashes), _LOOKUP_CHUNK):
            part = hashes[start : start + _LOOKUP_CHUNK]
            marks = ", ".join("?" * len(part))
            sql = f"SELECT h, pos, st, bf, key FROM seen WHERE h IN ({marks})"  # noqa: S608
            out.extend((h, p, s, b, load_key(k)) for h, p, s, b, k in conn.execute(sql, part))
        return out

    def update(self, changes: Iterable[tuple[int, int, int, int]]) -> None:
        """Set (status, before) of stored keys, given as (status, before, hash, position)."""
        conn = self._conn()
        conn.execute("BEGIN")
        conn.executemany("UPDATE seen SET st = ?, bf = ? WHERE h = ? AND pos = ?", changes)
        conn.execute("COMMIT")

    def _order(self) -> sqlite3.Connection:
        conn = self._conn()
        if not self._ordered:
            # Built once, when the ChangeSet is first read in order: a covering index, so
            # reading a status's keys by position is one sequential scan.
            conn.execute("CREATE INDEX IF NOT EXISTS seen_order ON seen (st, pos, key)")
            self._ordered = True
        return conn

    def keys(self, status: int) -> Iterator[Key]:
        """The stored keys of a status, in order of first appearance."""
        cur = self._order().execute("SELECT key FROM seen WHERE st = ? ORDER BY pos", (status,))
        while rows := cur.fetchmany(1024):
            for (data,) in rows:
                yield load_key(data)

    def key_at(self, status: int, index: int) -> Key:
        """The ``index``-th stored key of a status (reads the index up to it)."""
        sql = "SELECT key FROM seen WHERE st = ? ORDER BY pos LIMIT 1 OFFSET ?"
        row = self._order().execute(sql, (status, index)).fetchone()
        if row is None:
            raise IndexError(index)
        return load_key(row[0])


@dataclass(frozen=True)
class Stored:
    """The keys of one status in a spill file (a part of a :class:`SpilledKeys`)."""

    spill: Spill
    status: int
    n: int

    def __len__(self) -> int:
        return 0 if self.spill.closed else self.n

    def __iter__(self) -> Iterator[Key]:
        return iter(()) if self.spill.closed else self.spill.keys(self.status)

    def __getitem__(self, index: int) -> Key:
        return self.spill.key_at(self.status, index)
