"""What an upsert changed: the :class:`ChangeSet`, and the per-call record that keeps it exact.

Rows are streamed in batches and a key may come back in a later batch of the same call, so the
outcome of each key is kept relative to the table *before the call*. The record holds, per key
seen: the key itself (the ChangeSet lists it anyway), one status byte, its 64-bit hash (to find
it again) and an 8-byte digest of the row stored before the call, set only for keys this call
updated: the one thing a later batch needs to tell "updated" from "restored". Nothing per key
depends on the width of the rows.

Memory is bounded the way ``sort`` bounds it, by spilling to a file. Up to ``memory_keys`` keys
(:data:`DEFAULT_MEMORY_KEYS`) are kept in memory: the keys in a list, statuses and digests in
arrays, hashes in sorted numpy runs. When that many are held, all of them move to a temporary
SQLite database (:class:`_Spill`), one row per key clustered by hash, and memory starts again
empty. Later batches look their keys up in both places: in memory, and in the file for the
hashes that a fixed-size Bloom filter says it may hold (most keys of a call are new, and a
probe of the file costs a microsecond, the filter a few nanoseconds). Either way a hash match
is confirmed by comparing the encoded keys, so equal hashes of different keys are harmless.

The returned ChangeSet then lists the spilled keys from the file (:class:`SpilledKeys`, read
in order of first appearance), followed by those still in memory. The file is deleted when the
ChangeSet is closed (``close()``, or a ``with`` block) or garbage-collected, and when the
interpreter exits. What stays in memory per call is the bound's worth of keys, the 1 MiB
filter and SQLite's 2 MiB page cache, however many rows the call upserts.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import pickle
import sqlite3
import tempfile
import uuid
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from itertools import chain, islice
from typing import Any, overload

import numpy as np

Key = tuple[Any, ...]

INSERTED, UPDATED, UNCHANGED = 0, 1, 2

DEFAULT_MEMORY_KEYS = 50_000
"""Keys an upsert keeps in memory before it moves them to a temporary file (~9 MB of UUIDs)."""


class SpilledKeys(Sequence[Key]):
    """Keys of one status, partly in a temporary file: a read-only sequence.

    It iterates in order of first appearance, has a length, is indexed (a position in the file
    is found by reading up to it) and compares equal to a list of the same keys. Once its
    :class:`ChangeSet` is closed it is empty.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable (extend), like a list

    def __init__(self, parts: Iterable[_Stored | list[Key]]) -> None:
        self._parts: list[_Stored | list[Key]] = [p for p in parts if len(p)]

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
            if isinstance(part, _Stored):
                part.spill.close()
        self._parts = []


@dataclass(eq=True)
class ChangeSet:
    """The keys an upsert inserted, updated and left unchanged (validated Python values).

    Each list is a ``list``, or a :class:`SpilledKeys` when the upsert moved keys to a
    temporary file; both iterate in order of first appearance, have a length, are indexed and
    compare equal to a list. ``close()`` (or leaving a ``with`` block) deletes the file at once;
    otherwise it goes when the ChangeSet is garbage-collected.
    """

    table: str
    inserted: list[Key] | SpilledKeys = field(default_factory=list)
    updated: list[Key] | SpilledKeys = field(default_factory=list)
    unchanged: list[Key] | SpilledKeys = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when anything was written."""
        return bool(len(self.inserted) or len(self.updated))

    def extend(self, other: ChangeSet) -> None:
        """Add another ChangeSet of the same table.

        Spilled keys are shared, not copied, so memory stays bounded; closing either
        ChangeSet then deletes the file both read.
        """
        self.inserted = _joined(self.inserted, other.inserted)
        self.updated = _joined(self.updated, other.updated)
        self.unchanged = _joined(self.unchanged, other.unchanged)

    def counts(self) -> dict[str, int]:
        """``{"inserted": n, "updated": n, "unchanged": n}``."""
        return {
            "inserted": len(self.inserted),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
        }

    def close(self) -> None:
        """Delete the temporary file of spilled keys, if any (its lists are empty afterwards)."""
        for keys in (self.inserted, self.updated, self.unchanged):
            if isinstance(keys, SpilledKeys):
                keys.close()

    def __enter__(self) -> ChangeSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _joined(
    mine: list[Key] | SpilledKeys, theirs: list[Key] | SpilledKeys
) -> list[Key] | SpilledKeys:
    if isinstance(mine, list) and isinstance(theirs, SpilledKeys):
        # Spilled keys stay in their file rather than fill memory.
        joined = SpilledKeys([mine])
        joined.extend(theirs)
        return joined
    mine.extend(theirs)
    return mine


def digest(values: tuple[Any, ...]) -> int:
    """A 64-bit digest of a row in parameter space (equal rows, equal digests).

    ``hash()`` will not do: ``hash(-1) == hash(-2)``, so two versions of a row differing only
    there would look equal. Parameter values of one column have one type, and one ``repr`` per
    value, except the float zeros: ``-0.0 == 0.0``, so ``-0.0`` is taken as ``0.0``.
    """
    values = tuple(v + 0.0 if v.__class__ is float else v for v in values)
    text = repr(values).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little", signed=True)


class _KeyIndex:
    """Positions of the keys seen so far, looked up by 64-bit hash.

    Sorted runs of (hash, position), merged like a binary counter (a run is merged into the
    one before it while that one is not larger), so a lookup searches O(log n) runs and the
    merging costs O(n log n) in all. Equal hashes of different keys are allowed: the caller
    checks each candidate position.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, hashes: np.ndarray, positions: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        self._runs.append((hashes[order], positions[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= len(self._runs[-1][0]):
            (h2, p2), (h1, p1) = self._runs.pop(), self._runs.pop()
            h, p = np.concatenate((h1, h2)), np.concatenate((p1, p2))
            order = np.argsort(h, kind="stable")
            self._runs.append((h[order], p[order]))

    def candidates(self, hashes: np.ndarray) -> dict[int, list[int]]:
        """For each index into ``hashes`` whose hash was seen: the positions with that hash."""
        out: dict[int, list[int]] = {}
        for h, p in self._runs:
            lo = np.searchsorted(h, hashes, "left")
            hi = np.searchsorted(h, hashes, "right")
            for i in np.flatnonzero(hi > lo).tolist():
                out.setdefault(i, []).extend(p[lo[i] : hi[i]].tolist())
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (hash, position), sorted by hash."""
        if not self._runs:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        h = np.concatenate([r[0] for r in self._runs])
        p = np.concatenate([r[1] for r in self._runs])
        order = np.argsort(h, kind="stable")
        return h[order], p[order]


# --- the spill file ------------------------------------------------------------------------------

# Keys are stored with marshal, which is several times faster than pickle for the types keys
# are made of: each value either as it is (the exact builtin types marshal round-trips) or
# tagged and reduced to builtins. Anything else (a str subclass, an aware datetime, ...) is
# pickled, so every key comes back as the same Python values. The file is private to this
# process (mkstemp: mode 0600) and read back by it alone, so unpickling it is safe.
_PLAIN = frozenset({int, str, bytes, float, bool, type(None)})


def _dump_key(key: Key) -> bytes:
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


def _dumper(keys: list[Key]) -> Callable[[Key], bytes]:
    """:func:`_dump_key`, specialised for keys whose columns each hold values of one type.

    Keys of one table nearly always are (validated values), and then each key costs a tuple
    and one marshal call instead of a type test per value.
    """
    if not keys or len({len(k) for k in keys}) != 1:
        return _dump_key
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
            return _dump_key
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


def _load_key(data: bytes) -> Key:
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


class _Spill:
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
            out.extend((h, p, s, b, _load_key(k)) for h, p, s, b, k in conn.execute(sql, part))
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
                yield _load_key(data)

    def key_at(self, status: int, index: int) -> Key:
        """The ``index``-th stored key of a status (reads the index up to it)."""
        sql = "SELECT key FROM seen WHERE st = ? ORDER BY pos LIMIT 1 OFFSET ?"
        row = self._order().execute(sql, (status, index)).fetchone()
        if row is None:
            raise IndexError(index)
        return _load_key(row[0])


@dataclass(frozen=True)
class _Stored:
    """The keys of one status in a spill file (a part of a :class:`SpilledKeys`)."""

    spill: _Spill
    status: int
    n: int

    def __len__(self) -> int:
        return 0 if self.spill.closed else self.n

    def __iter__(self) -> Iterator[Key]:
        return iter(()) if self.spill.closed else self.spill.keys(self.status)

    def __getitem__(self, index: int) -> Key:
        return self.spill.key_at(self.status, index)


# --- the per-call record ----------------------------------------------------------------------


class Outcome:
    """Per-key outcome of one upsert call, relative to the table before the call.

    ``encode_key`` turns a key as listed (validated values) into its encoded form, to confirm
    a hash match; keys are matched *encoded* (two datetimes truncated to the same stored key,
    or a uuid given as str and as UUID, are one key). Keys have positions in order of first
    appearance; once ``memory_keys`` are held in memory they all move to a spill file (None:
    never).
    """

    def __init__(
        self, encode_key: Callable[[Key], Key], memory_keys: int | None = DEFAULT_MEMORY_KEYS
    ) -> None:
        if memory_keys is not None and memory_keys < 0:
            raise ValueError(f"memory_keys must be >= 0 or None, not {memory_keys}")
        self._encode_key = encode_key
        self._bound = memory_keys
        self._base = 0  # position of the first key in memory; the ones before are spilled
        self._keys: list[Key] = []
        self._status = bytearray()
        self._index = _KeyIndex()
        # Digest of the row stored before the call, for keys this call updated (else 0).
        self._before = array("q")
        self._spill: _Spill | None = None
        # Spilled keys the last earlier() found, and the changes to write back, by position:
        # (hash, status, before).
        self._found: dict[int, tuple[int, int, int]] = {}
        self._pending: dict[int, tuple[int, int, int]] = {}

    def earlier(self, ekeys: Sequence[Key]) -> tuple[list[int], np.ndarray]:
        """(position of each encoded key in earlier batches or -1, the keys' hashes)."""
        hashes = np.fromiter(map(hash, ekeys), dtype=np.int64, count=len(ekeys))
        positions = [-1] * len(ekeys)
        keys, base = self._keys, self._base
        for i, candidates in self._index.candidates(hashes).items():
            for pos in candidates:
                if self._encode_key(keys[pos - base]) == ekeys[i]:
                    positions[i] = pos
                    break
        if self._spill is not None:
            self._write_back()
            ask = [i for i in self._spill.maybe(hashes) if positions[i] < 0]
            if ask:
                stored: dict[int, list[tuple[int, int, int, Key]]] = {}
                for h, pos, st, bf, key in self._spill.lookup(hashes[ask].tolist()):
                    stored.setdefault(h, []).append((pos, st, bf, key))
                for i in ask:
                    h = int(hashes[i])
                    for pos, st, bf, key in stored.get(h, ()):
                        if self._encode_key(key) == ekeys[i]:
                            positions[i] = pos
                            self._found[pos] = (h, st, bf)
                            break
        return positions, hashes

    def status(self, pos: int) -> int:
        """The status so far of the key at ``pos``."""
        if pos >= self._base:
            return self._status[pos - self._base]
        return self._found[pos][1]

    def before(self, pos: int) -> int:
        """Digest of the row stored before the call, for a key this call updated."""
        if pos >= self._base:
            return self._before[pos - self._base]
        return self._found[pos][2]

    def set(self, pos: int, status: int, before: int = 0) -> None:
        """Change the status of a key seen in an earlier batch."""
        if pos >= self._base:
            self._status[pos - self._base] = status
            if status == UPDATED and before:
                self._before[pos - self._base] = before
            return
        assert self._spill is not None
        h, was, bf = self._found[pos]
        if status == UPDATED and before:
            bf = before
        self._found[pos] = self._pending[pos] = (h, status, bf)
        self._spill.counts[was] -= 1
        self._spill.counts[status] += 1

    def add(
        self, keys: Sequence[Key], statuses: bytes, befores: Sequence[int], hashes: np.ndarray
    ) -> None:
        """Record keys new to this call (first appearance order), with their hashes."""
        start = self._base + len(self._keys)
        self._keys.extend(keys)
        self._status.extend(statuses)
        self._before.extend(befores)
        self._index.add(hashes, np.arange(start, start + len(keys), dtype=np.int64))
        if self._bound is not None and len(self._keys) >= self._bound:
            self._move_to_spill()

    def _write_back(self) -> None:
        if self._pending:
            assert self._spill is not None
            self._spill.update((st, bf, h, pos) for pos, (h, st, bf) in self._pending.items())
            self._pending.clear()
        self._found.clear()

    def _move_to_spill(self) -> None:
        """Move every key in memory to the spill file; memory starts again empty."""
        if self._spill is None:
            self._spill = _Spill()
        self._write_back()
        keys, base = self._keys, self._base
        hashes, positions = self._index.items()
        order = positions - base
        statuses = np.frombuffer(self._status, dtype=np.uint8)[order]
        befores = np.frombuffer(self._before, dtype=np.int64)[order]

        def keys_at(start: int, stop: int) -> list[Key]:
            return [keys[i] for i in order[start:stop].tolist()]

        self._spill.add(hashes, positions, statuses, befores, keys_at, _dumper(keys))
        self._base += len(keys)
        self._keys, self._status, self._before = [], bytearray(), array("q")
        self._index = _KeyIndex()

    def close(self) -> None:
        """Delete the spill file, if any (after an error: the ChangeSet will not be made)."""
        if self._spill is not None:
            self._spill.close()

    def changeset(self, table: str) -> ChangeSet:
        """The ChangeSet: each key once, in order of first appearance within its list."""
        lists: tuple[list[Key], list[Key], list[Key]] = ([], [], [])
        for key, status in zip(self._keys, self._status, strict=True):
            lists[status].append(key)
        if self._spill is None:
            return ChangeSet(table, *lists)
        self._write_back()
        spill = self._spill
        inserted, updated, unchanged = (
            SpilledKeys([_Stored(spill, st, spill.counts[st]), lists[st]])
            for st in (INSERTED, UPDATED, UNCHANGED)
        )
        return ChangeSet(table, inserted, updated, unchanged)
