"""What an upsert changed: the :class:`ChangeSet`, and the per-call record that keeps it exact.

Rows are streamed in batches and a key may come back in a later batch of the same call, so the
outcome of each key is kept relative to the table *before the call*. The record holds, per key
seen: the key itself (the ChangeSet lists it anyway), one status byte, and 16 bytes of index
(a 64-bit hash and a position, in sorted numpy runs). Only keys this call updated also keep an
8-byte digest of the row stored before the call, the one thing a later batch needs to tell
"updated" from "restored". Nothing per key depends on the width of the rows.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Key = tuple[Any, ...]

INSERTED, UPDATED, UNCHANGED = 0, 1, 2


@dataclass
class ChangeSet:
    """The keys an upsert inserted, updated and left unchanged (validated Python values)."""

    table: str
    inserted: list[Key] = field(default_factory=list)
    updated: list[Key] = field(default_factory=list)
    unchanged: list[Key] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when anything was written."""
        return bool(self.inserted or self.updated)

    def extend(self, other: ChangeSet) -> None:
        """Add another ChangeSet of the same table."""
        self.inserted.extend(other.inserted)
        self.updated.extend(other.updated)
        self.unchanged.extend(other.unchanged)

    def counts(self) -> dict[str, int]:
        """``{"inserted": n, "updated": n, "unchanged": n}``."""
        return {
            "inserted": len(self.inserted),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
        }


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


class Outcome:
    """Per-key outcome of one upsert call, relative to the table before the call.

    ``encode_key`` turns a key as listed (validated values) into its encoded form, to confirm
    a hash match; keys are matched *encoded* (two datetimes truncated to the same stored key,
    or a uuid given as str and as UUID, are one key).
    """

    def __init__(self, encode_key: Callable[[Key], Key]) -> None:
        self._encode_key = encode_key
        self._keys: list[Key] = []
        self._status = bytearray()
        self._index = _KeyIndex()
        # Digest of the row stored before the call, for keys this call updated (else 0).
        self._before = array("q")

    def earlier(self, ekeys: Sequence[Key]) -> tuple[list[int], np.ndarray]:
        """(position of each encoded key in earlier batches or -1, the keys' hashes)."""
        hashes = np.fromiter(map(hash, ekeys), dtype=np.int64, count=len(ekeys))
        positions = [-1] * len(ekeys)
        for i, candidates in self._index.candidates(hashes).items():
            for pos in candidates:
                if self._encode_key(self._keys[pos]) == ekeys[i]:
                    positions[i] = pos
                    break
        return positions, hashes

    def status(self, pos: int) -> int:
        """The status so far of the key at ``pos``."""
        return self._status[pos]

    def before(self, pos: int) -> int:
        """Digest of the row stored before the call, for a key this call updated."""
        return self._before[pos]

    def set(self, pos: int, status: int, before: int = 0) -> None:
        """Change the status of a key seen in an earlier batch."""
        self._status[pos] = status
        if status == UPDATED and before:
            self._before[pos] = before

    def add(
        self, keys: Sequence[Key], statuses: bytes, befores: Sequence[int], hashes: np.ndarray
    ) -> None:
        """Record keys new to this call (first appearance order), with their hashes."""
        start = len(self._keys)
        self._keys.extend(keys)
        self._status.extend(statuses)
        self._before.extend(befores)
        self._index.add(hashes, np.arange(start, start + len(keys), dtype=np.int64))

    def changeset(self, table: str) -> ChangeSet:
        """The ChangeSet: each key once, in order of first appearance within its list."""
        cs = ChangeSet(table)
        lists = (cs.inserted, cs.updated, cs.unchanged)
        for key, status in zip(self._keys, self._status, strict=True):
            lists[status].append(key)
        return cs
