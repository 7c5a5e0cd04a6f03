"""PyRAT's list grammar: field selection (``k``), sorting (``s``), states, eartag batches.

Every list endpoint takes repeated ``k`` keys (PyRAT returns exactly those fields and rejects an
unknown one with 400), ``s=<field>:asc|desc``, ``l``/``o`` paging and plain filters. Repeated
values are sent as repeated keys (``state=live&state=sacrificed``), which is what ``requests``
does with a list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode

#: Since late 2024 PyRAT returns only live animals unless asked: a full sync asks for all three.
ALL_STATES = ("live", "sacrificed", "exported")

#: Animal fields the animals stream requests (all are valid ``k`` keys of ``/animals``).
ANIMAL_KEYS = (
    "animalid", "eartag_or_id", "labid", "state", "sex", "dateborn", "datesacrificed",
    "sacrifice_reason_name", "sacrifice_comment", "species_name", "strain_id", "strain_name",
    "generation", "mutations", "parents", "cagenumber", "room_name", "building_name",
    "responsible_id", "responsible_fullname", "owner_fullname", "licence_id", "licence_number",
    "licence_title", "projects", "weight", "date_last_comment", "age_days", "age_weeks",
)  # fmt: skip

#: What the child streams read of each animal: its ids and the fields that move when its
#: weights, comments or procedures change (``weight`` is the latest weighing, for instance).
CHILD_SIGNAL_KEYS = (
    "animalid", "eartag_or_id", "state", "weight", "date_last_comment", "datesacrificed",
    "licence_id", "responsible_id",
)  # fmt: skip

PUP_KEYS = (
    "pupid", "eartag_or_id", "sex", "dateborn", "strain_id", "strain_name", "mutations",
    "parents", "age_days",
)  # fmt: skip

#: ``animalid`` is not sortable on PyRAT; the eartag is, so stable paging sorts by it.
ANIMAL_SORT = "eartag_or_id:asc"

#: A conservative request-URL limit; servers reject much longer URLs (414).
DEFAULT_MAX_URL = 6000


def list_params(
    keys: Sequence[str], *, sort: str | None = None, **filters: str | Sequence[str]
) -> dict[str, str | list[str]]:
    """The query of a list request: ``k`` keys, optional ``s``, filters as given."""
    params: dict[str, str | list[str]] = {"k": list(keys)}
    if sort:
        params["s"] = sort
    for name, value in filters.items():
        params[name] = value if isinstance(value, str) else list(value)
    return params


def eartag_batches(
    eartags: Sequence[str],
    url: str,
    params: Mapping[str, str | Sequence[str]],
    max_url: int = DEFAULT_MAX_URL,
) -> list[list[str]]:
    """Split eartag filters into batches whose request URL stays under ``max_url`` characters.

    The length is that of the whole URL: ``url``, the fixed ``params``, the paging parameters
    (with room for large values) and every ``&eartag=<quoted>`` of the batch. An eartag too long
    to fit in any URL raises ``ValueError``.
    """
    overhead = len(url) + 1 + len(urlencode(params, doseq=True)) + len("&l=1000000&o=1000000000")
    batches: list[list[str]] = []
    batch: list[str] = []
    size = overhead
    for tag in dict.fromkeys(eartags):  # unique, order kept
        cost = len("&eartag=") + len(quote(tag, safe=""))
        if overhead + cost > max_url:
            raise ValueError(f"eartag filter {tag[:40]!r} alone makes the URL too long")
        if batch and size + cost > max_url:
            batches.append(batch)
            batch, size = [], overhead
        batch.append(tag)
        size += cost
    if batch:
        batches.append(batch)
    return batches
