"""A batch of source records on its way through the engine: validated, keyed and hashed
(:func:`identify`), its duplicates told apart (:func:`duplicates`), its rows validated
(:func:`validate_rows`), and the short texts the quarantine keeps of what went wrong.

The engine (:mod:`limsync.sync.engine`) runs these per batch, between reading and writing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pydantic

from limsync.connectors.base import Key, Stream
from limsync.errors import RowError
from limsync.pipeline import ledger
from limsync.pipeline.tables import TableSpec
from limsync.pipeline.validation import validate_batch, validate_row
from limsync.sync.identity import Identity
from limsync.sync.report import StreamReport
from limsync.sync.writer import Item


def raw_key_text(stream: Stream, raw: Mapping[str, Any]) -> str:
    """A quarantine key for a raw record: its source key if readable, else a content hash."""
    try:
        return ledger.key_text(stream.key_from_raw(raw))
    except Exception:
        digest = hashlib.blake2b(
            json.dumps(raw, sort_keys=True, default=str).encode(), digest_size=8
        ).hexdigest()
        return f"#raw:{digest}"


@dataclass
class Identified:
    """A batch validated and hashed: its records' keys, key texts and content hashes, split by
    whether this scan read the key before (``again``: a duplicate) or not (``first``)."""

    valid: list[tuple[Any, pydantic.BaseModel]] = field(default_factory=list)
    records: list[pydantic.BaseModel] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    again: list[int] = field(default_factory=list)
    asked: dict[str, str] = field(default_factory=dict)  # key text -> hash to ask the ledger
    quarantined: list[tuple[str, str, str, Any]] = field(default_factory=list)


def identify(ident: Identity, raws: list[dict[str, Any]], seen: set[int]) -> Identified:
    """Validate and hash a batch; split it by whether this scan read each key before
    (``seen``: the :func:`~limsync.sync.identity.seen_id` of every key read, updated)."""
    stream = ident.stream
    ided = Identified()
    valid, invalid = ident.validate(raws)
    for raw, exc in invalid:
        ided.quarantined.append((raw_key_text(stream, raw), "validate", short_error(exc), raw))
    ided.valid = valid
    ided.records = records = [rec for _, rec in valid]
    ided.keys = ident.keys(records)
    ided.texts = texts = ident.texts(ided.keys)
    ided.hashes = hashes = ident.hashes(records)
    ids = ident.seen_ids(texts)
    if seen.isdisjoint(ids) and len(set(ids)) == len(ids):
        # The usual batch: every key read for the first time (three loops in C, not one in
        # Python: a tenth of an unchanged re-sync's work was this split).
        seen.update(ids)
        ided.first = list(range(len(ids)))
    else:
        for i, digest in enumerate(ids):
            if digest in seen:  # unordered paging, or a key twice in an export: see duplicates()
                ided.again.append(i)
            else:
                seen.add(digest)
                ided.first.append(i)
    # Each key text with the hash of its first record in the batch (reversed, so that the
    # first record's hash is the one the dict keeps). A record of ``first`` is the first of
    # its key in the batch, so the hash asked about is its own.
    ided.asked = dict(zip(reversed(texts), reversed(hashes), strict=True))
    return ided


def duplicates(
    dupes: list[Item],
    batch: Mapping[str, str],
    entries: Mapping[str, tuple[str, str]],
    sr: StreamReport,
    quarantined: list[tuple[str, str, str, Any]],
) -> None:
    """Records whose key this scan already read: counted when their content is the same,
    quarantined (stage ``duplicate``) when it differs; the first one stays. (The files and
    SQL connectors find such keys themselves and name both places.)
    """
    for d in dupes:
        first = batch.get(d.ktext)  # the hash of the first one, when it is in this batch
        entry = entries.get(d.ktext)  # (content hash, state)
        if first is None and entry is not None and entry[1] == "present":
            first = entry[0]
        if first == d.hash:
            sr.duplicates += 1
            continue
        here = d.raw.get("_source")  # where file records come from (subjects.csv:12)
        at = f" at {here}" if here is not None else ""
        message = f"key {d.ktext} read again{at} with different content; the first one is used"
        quarantined.append((d.ktext, "duplicate", message, d.raw))


def validate_rows(items: Sequence[Item]) -> dict[int, RowError]:
    """Validate the items' rows in place, a table at a time; ``id(item) -> error`` of the bad.

    One call into pydantic-core per table instead of one per row. When a table's rows fail,
    they are validated one by one, and a record with several bad rows gets the error of its
    first (in the order its mapping produced them), as validating record by record would.
    """
    by_table: dict[int, tuple[TableSpec, list[tuple[Item, int]]]] = {}  # by id(spec)
    for item in items:
        for pos, (spec, _) in enumerate(item.rows):
            entry = by_table.get(id(spec))
            if entry is None:
                entry = by_table[id(spec)] = (spec, [])
            entry[1].append((item, pos))
    failed: dict[int, tuple[int, RowError]] = {}  # id(item) -> (row position, its error)
    for spec, places in by_table.values():
        rows: list[Mapping[str, Any]] = [item.rows[pos][1] for item, pos in places]
        try:
            # Each a model's own __dict__, which nothing else holds: no copy needed.
            valid = cast(list[dict[str, Any]], validate_batch(spec, rows))
        except RowError:
            for (item, pos), row in zip(places, rows, strict=True):
                try:
                    item.rows[pos] = (spec, validate_row(spec, row))
                except RowError as exc:
                    earlier = failed.get(id(item))
                    if earlier is None or pos < earlier[0]:
                        failed[id(item)] = (pos, exc)
            continue
        for (item, pos), row in zip(places, valid, strict=True):
            item.rows[pos] = (spec, row)
    return {k: exc for k, (_, exc) in failed.items()}


def short_error(exc: pydantic.ValidationError) -> str:
    """A validation error in one line: its first three errors and how many more."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
