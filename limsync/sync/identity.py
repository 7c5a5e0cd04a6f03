"""What the engine knows a source record by: its key, key text, seen digest and content hash.

Every record of every sync passes through here, most of them unchanged, so the work is done a
batch at a time wherever that saves per-record Python: one pydantic call validates a batch
(records are validated one by one only when the batch holds an invalid one, so the quarantine
still gets each invalid record on its own), the key fields are read by one C-level getter, and
the serializer is called directly rather than through ``model_dump_json``'s keyword handling.
The results are the same as record by record, byte for byte: content hashes already in ledgers
stay valid.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pydantic

from limsync.connectors.base import Key, Stream
from limsync.pipeline import ledger


def seen_id(ktext: str) -> int:
    """A key text's 128-bit digest: what a scan remembers of each key it has seen.

    A full scan of a million records keeps ~50-byte ints instead of ~100-byte strings; two keys
    sharing a digest is as unlikely as anything ever is (about 10^-27 at that size).
    """
    return int.from_bytes(hashlib.blake2b(ktext.encode(), digest_size=16).digest())


def content_hash(record: pydantic.BaseModel, volatile: set[str] | None) -> str:
    """Hash of a validated record without its volatile fields (32 hex characters).

    ``model_dump_json`` writes fields in declaration order, so equal records give equal bytes.
    """
    data = record.model_dump_json(exclude=volatile or None)
    return hashlib.blake2b(data.encode(), digest_size=16).hexdigest()


# pydantic's JSON form of a UUID is ``str(uuid)``, written in Rust in a third of the time.
_UUIDS = pydantic.TypeAdapter(list[uuid.UUID])


@functools.cache
def _list_adapter(model: type[pydantic.BaseModel]) -> pydantic.TypeAdapter[list[Any]]:
    return pydantic.TypeAdapter(list[model])  # type: ignore[valid-type]


class Identity:
    """One stream's way of validating, keying and hashing batches of raw records."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._many = _list_adapter(stream.model)
        self._to_json = stream.model.__pydantic_serializer__.to_json
        self._exclude = set(stream.volatile) or None
        get = operator.attrgetter(*stream.key)
        # attrgetter of one name returns the value itself, of several a tuple: keys are tuples.
        self._key: Callable[[Any], Key] = (lambda rec: (get(rec),)) if len(stream.key) == 1 else get
        fields = stream.model.model_fields
        self._uuid_key = len(stream.key) == 1 and fields[stream.key[0]].annotation is uuid.UUID

    def validate(
        self, raws: Sequence[Mapping[str, Any]]
    ) -> tuple[list[tuple[Any, pydantic.BaseModel]], list[tuple[Any, pydantic.ValidationError]]]:
        """(raw, record) pairs of the valid records and (raw, error) pairs of the others.

        One call for the batch; when it finds an invalid record, each record is validated on its
        own so that every error belongs to one record and the others still go on.
        """
        try:
            records = self._many.validate_python(raws)
        except pydantic.ValidationError:
            pass
        else:
            return list(zip(raws, records, strict=True)), []
        valid: list[tuple[Any, pydantic.BaseModel]] = []
        invalid: list[tuple[Any, pydantic.ValidationError]] = []
        model = self.stream.model
        for raw in raws:
            try:
                valid.append((raw, model.model_validate(raw)))
            except pydantic.ValidationError as exc:
                invalid.append((raw, exc))
        return valid, invalid

    def keys(self, records: Sequence[pydantic.BaseModel]) -> list[Key]:
        """The source keys of validated records (as :meth:`Stream.key_of` gives them)."""
        return list(map(self._key, records))

    def hashes(self, records: Sequence[pydantic.BaseModel]) -> list[str]:
        """The content hashes of validated records (as :func:`content_hash` gives them)."""
        to_json, exclude, blake2b = self._to_json, self._exclude, hashlib.blake2b
        # to_json gives the UTF-8 bytes that model_dump_json decodes and content_hash encodes.
        return [
            blake2b(to_json(rec, exclude=exclude), digest_size=16).hexdigest() for rec in records
        ]

    @staticmethod
    def seen_ids(texts: Sequence[str]) -> list[int]:
        """The :func:`seen_id` of key texts."""
        blake2b, from_bytes = hashlib.blake2b, int.from_bytes
        return [from_bytes(blake2b(t.encode(), digest_size=16).digest()) for t in texts]

    def texts(self, keys: Sequence[Key]) -> list[str]:
        """The key texts of keys (as :func:`ledger.key_text` gives them)."""
        if self._uuid_key:
            values = [k[0] for k in keys]
            # A validator of the field may have returned something else: then the general way.
            if all(type(v) is uuid.UUID for v in values):
                return ['["' + s + '"]' for s in _UUIDS.dump_python(values, mode="json")]
        return ledger.key_texts(keys)
