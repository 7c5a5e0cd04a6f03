"""The per-animal child streams: weights, comments and procedures.

PyRAT lists an animal's weights, comments and procedures only one animal at a time
(``animals/{eartag}/weights``), and has no modified-since filter. Asking every animal on every
run would cost one request per animal and stream, so these streams read the animal list (a few
fields, paged) and fetch the items only of animals that are new or changed:

* Each animal's items are yielded as one *bundle* record, keyed ``(animalid, "")``.
* After it comes a *checkpoint* record keyed ``(animalid, <fingerprint>)``, where the
  fingerprint hashes the animal's list fields that move when its items change (``weight`` is
  the latest weighing, ``date_last_comment`` the latest comment, plus state, licence, ...).
  A checkpoint maps to no rows; it only lands in the engine's ledger.
* On the next run an animal whose bundle and current checkpoint are both in the ledger
  (``ReadContext.known``) is not fetched: its keys are reported through ``ReadContext.seen``.
  A changed animal has a new fingerprint, so it is fetched again; the superseded checkpoint
  is missing from the scan and the stream's delete policy retires it (it has no rows).

The checkpoint follows its bundle in the same page, so it is committed with the bundle or
after it: a crash in between means the animal is fetched again, never skipped.

Animals whose eartag is shared with another animal, or contains ``/`` (PyRAT answers 404), cannot
be addressed by ``animals/{eartag}/...``: they are skipped with a warning, and a bundle read
earlier is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from limsync.connectors import (
    Key,
    Page,
    ReadContext,
    Record,
)
from limsync.errors import HTTPStatusError, SourceError

if TYPE_CHECKING:
    from limsync.connectors.pyrat.connector import PyratConnector

log = logging.getLogger(__name__)

#: Child stream -> the sub-resource of ``animals/{eartag}/``.
CHILD_PATHS = {"weights": "weights", "comments": "comments", "procedures": "procedures"}


def fingerprint(animal: Record) -> str:
    """A short digest of an animal's signal fields (those of ``CHILD_SIGNAL_KEYS``)."""
    fields = {k: v for k, v in sorted(animal.items()) if k != "animalid"}
    text = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def addressable(eartag: Any, counts: Counter[str]) -> bool:
    """Whether ``animals/{eartag}/...`` names exactly this animal."""
    return isinstance(eartag, str) and bool(eartag) and "/" not in eartag and counts[eartag] == 1


def read_children(
    conn: PyratConnector, stream: str, ctx: ReadContext, *, max_animals: int | None = None
) -> Iterator[Page]:
    """Pages of bundles (and checkpoints) of one child stream; see the module docstring."""
    animals: dict[int, Record] = {}
    for page in conn.animal_signals():
        for record in page:
            animalid = record.get("animalid")
            if isinstance(animalid, int) and animalid not in animals:
                animals[animalid] = record
        if max_animals is not None and len(animals) >= max_animals:
            break
    counts = Counter(str(a.get("eartag_or_id")) for a in animals.values())
    skip_known = conn.settings.children == "changed" and ctx.seen is not None
    order = list(animals.values())[:max_animals]
    chunk = max(1, conn.page_size(stream))
    unreachable = 0
    with ThreadPoolExecutor(conn.settings.detail_workers, f"pyrat-{stream}") as pool:
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            wanted, blocked = _select(part, counts, ctx, skip_known)
            if blocked:
                unreachable += len(blocked)
                known = ctx.known([(a["animalid"], "") for a in blocked])
                if known and ctx.seen is not None:
                    ctx.seen(sorted(known))  # keep what an earlier read found
            items = pool.map(lambda a: _fetch(conn, stream, a["eartag_or_id"]), wanted)
            out: Page = []
            vanished: list[Key] = []
            for animal, found in zip(wanted, items, strict=True):
                if found is None:
                    # Deleted or renamed since the list was read: keep what we have; the next
                    # scan decides whether the animal is gone.
                    vanished.append((animal["animalid"], ""))
                    continue
                base = {"animalid": animal["animalid"], "eartag_or_id": animal["eartag_or_id"]}
                out.append({**base, "checkpoint": "", "items": found})
                if skip_known:
                    out.append({**base, "checkpoint": fingerprint(animal), "items": []})
            if vanished and ctx.seen is not None:
                ctx.seen(sorted(ctx.known(vanished)))
            if out:
                yield out
    if unreachable:
        log.warning(
            "%s.%s: %d animal(s) have an eartag shared with another animal or containing '/'; "
            "PyRAT cannot list their %s by eartag, so they were skipped",
            conn.name,
            stream,
            unreachable,
            CHILD_PATHS[stream],
        )


def _select(
    animals: list[Record], counts: Counter[str], ctx: ReadContext, skip_known: bool
) -> tuple[list[Record], list[Record]]:
    """(animals to fetch, animals that cannot be fetched); reports unchanged ones as seen."""
    reachable = [a for a in animals if addressable(a.get("eartag_or_id"), counts)]
    blocked = [a for a in animals if not addressable(a.get("eartag_or_id"), counts)]
    if not skip_known or ctx.seen is None:
        return reachable, blocked
    keys: dict[int, tuple[Key, Key]] = {
        a["animalid"]: ((a["animalid"], ""), (a["animalid"], fingerprint(a))) for a in reachable
    }
    known = ctx.known([k for pair in keys.values() for k in pair])
    unchanged = [a for a in reachable if all(k in known for k in keys[a["animalid"]])]
    if unchanged:
        ctx.seen([k for a in unchanged for k in keys[a["animalid"]]])
    done = {a["animalid"] for a in unchanged}
    return [a for a in reachable if a["animalid"] not in done], blocked


def _fetch(conn: PyratConnector, stream: str, eartag: str) -> list[Record] | None:
    """The items of one animal, or None when PyRAT no longer knows the eartag (404)."""
    url = conn.url(f"animals/{quote(eartag, safe='')}/{CHILD_PATHS[stream]}")
    try:
        body = conn.get(url).json()
    except HTTPStatusError as exc:
        if exc.status == 404:
            log.debug("animal %s vanished while its %s were read", eartag, stream)
            return None
        raise
    except ValueError:
        raise SourceError(f"GET animals/{eartag}/{CHILD_PATHS[stream]}: not JSON") from None
    if not isinstance(body, list) or not all(isinstance(i, dict) for i in body):
        raise SourceError(f"GET animals/{eartag}/{CHILD_PATHS[stream]}: not a list of objects")
    return body
