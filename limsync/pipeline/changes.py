"""What an upsert changed: the :class:`ChangeSet`, and the per-call record that keeps it exact.

Rows are streamed in batches and a key may come back in a later batch of the same call, so the
outcome of each key is kept relative to the table *before the call*. The record holds, per key
seen: the key itself (the ChangeSet lists it anyway), one status byte, its 64-bit hash (to find
it again) and an 8-byte digest of the row stored before the call, set only for keys this call
updated: the one thing a later batch needs to tell "updated" from "restored". Nothing per key
depends on the width of the rows.

Memory is bounded the way ``sort`` bounds it, by spilling to a file. Up to ``memory_keys`` keys
(:data:`DEFAULT_MEMORY_KEYS`) are kept in memory: the keys in a list, statuses and digests in
arrays, hashes in sorted numpy runs. When more are held, all of them move to a temporary
SQLite database (:class:`Spill`), one row per key clustered by hash, and memory starts again
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

import hashlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from limsync.pipeline.spill import Spill, SpilledKeys, Stored, dumper

Key = tuple[Any, ...]

INSERTED, UPDATED, UNCHANGED = 0, 1, 2

DEFAULT_MEMORY_KEYS = 100_000
"""Keys an upsert keeps in memory before it moves them to a temporary file (~18 MB of UUIDs).

Moving a key costs ~6 us (a row in the file): a call of up to this many rows pays nothing."""


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


# --- the per-call record ----------------------------------------------------------------------


class Outcome:
    """Per-key outcome of one upsert call, relative to the table before the call.

    ``encode_key`` turns a key as listed (validated values) into its encoded form, to confirm
    a hash match; keys are matched *encoded* (two datetimes truncated to the same stored key,
    or a uuid given as str and as UUID, are one key). Keys have positions in order of first
    appearance; once more than ``memory_keys`` are held in memory they all move to a spill
    file (None: never).
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
        self._spill: Spill | None = None
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
        # More than the bound, not as many: a call of exactly memory_keys rows (a round
        # number, often the whole load) would otherwise pay for moving all of them at its end.
        if self._bound is not None and len(self._keys) > self._bound:
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
            self._spill = Spill()
        self._write_back()
        keys, base = self._keys, self._base
        hashes, positions = self._index.items()
        order = positions - base
        statuses = np.frombuffer(self._status, dtype=np.uint8)[order]
        befores = np.frombuffer(self._before, dtype=np.int64)[order]

        def keys_at(start: int, stop: int) -> list[Key]:
            return [keys[i] for i in order[start:stop].tolist()]

        self._spill.add(hashes, positions, statuses, befores, keys_at, dumper(keys))
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
            SpilledKeys([Stored(spill, st, spill.counts[st]), lists[st]])
            for st in (INSERTED, UPDATED, UNCHANGED)
        )
        return ChangeSet(table, inserted, updated, unchanged)
