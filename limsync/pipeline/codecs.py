"""Values to driver parameters and back, per column type and dialect.

The upsert compares rows in *parameter space*: a new row's encoded value against the stored
value as the driver returns it, normalised by :meth:`Codec.stored`. That keeps change detection
exact without decoding every stored value into Python objects (uuid as binary(16) on MySQL, JSON
as text on MariaDB, DataJoint blobs as bytes, SQLite dates as text).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from limsync.pipeline import blob
from limsync.pipeline.columns import ColumnType

SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"  # the text SQLite datetimes are stored as
# json.dumps with options builds a new JSONEncoder per call (~40% of its time): build it once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal strings."""
    return _CANONICAL(value)


def _sqlite_datetime(v: dt.datetime) -> str:
    # SQLITE_DATETIME, 4x faster than strftime (and zero-padded years before 1000, which
    # strftime leaves unpadded and fromisoformat then cannot read back).
    return v.isoformat(" ", "microseconds")


def _identity(v: Any) -> Any:
    return v


@dataclass(frozen=True)
class Codec:
    """How one column's values travel to and from one dialect's driver."""

    encode: Callable[[Any], Any]  # validated Python value -> driver parameter
    decode: Callable[[Any], Any]  # driver value -> Python value
    stored: Callable[[Any], Any] = _identity  # driver value -> comparable parameter

    def same(self, encoded: Any, raw: Any) -> bool:
        """True when the stored ``raw`` value equals the new ``encoded`` one."""
        if encoded is None or raw is None:
            return encoded is None and raw is None
        return bool(encoded == self.stored(raw))


def _nullable(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(v: Any) -> Any:
        return None if v is None else f(v)

    wrapped.__wrapped__ = f  # type: ignore[attr-defined]  # for row_encoder: skip the wrapper
    return wrapped


def row_encoder(
    codecs: Sequence[Codec], names: Sequence[str]
) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """One function that encodes a whole row dict into a parameter tuple, in column order.

    The upsert encodes every value of every row, so this is its hottest loop. The function is
    generated once per table with one straight-line expression per column (as
    :mod:`dataclasses` does for ``__init__``): no per-value loop, no wrapper call for NULLs,
    nothing at all for values that pass unchanged. ``names`` are validated column names.
    """
    env: dict[str, Any] = {}
    parts = []
    for i, (codec, name) in enumerate(zip(codecs, names, strict=True)):
        getter = f"row.get({name!r})"
        fn = codec.encode
        if fn is _identity:
            parts.append(getter)
            continue
        inner = getattr(fn, "__wrapped__", None)
        env[f"f{i}"] = inner or fn
        parts.append(
            f"(None if (v{i} := {getter}) is None else f{i}(v{i}))" if inner else f"f{i}({getter})"
        )
    src = "def encode(row):\n    return (" + ", ".join(parts) + ",)\n"
    exec(compile(src, "<limsync row encoder>", "exec"), env)  # only validated names inside
    return env["encode"]  # type: ignore[no-any-return]


def _truncate_datetime(precision: int) -> Callable[[Any], dt.datetime]:
    step = 10 ** (6 - precision)

    def encode(v: Any) -> dt.datetime:
        if v.tzinfo is not None:
            # Store naive UTC, as DataJoint and Alyx (USE_TZ=False) do.
            v = v.astimezone(dt.UTC).replace(tzinfo=None)
        if v.microsecond % step:
            return v.replace(microsecond=v.microsecond - v.microsecond % step)  # type: ignore[no-any-return]
        return v  # type: ignore[no-any-return]

    return encode


def _json_loads_if_text(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str | bytes) else v


def _float32(v: Any) -> float:
    return float(np.float32(v))


def codec_for(ctype: ColumnType, dialect: str) -> Codec:
    """The codec for a column type on ``dialect`` (``sqlite``, ``mysql`` or ``postgresql``)."""
    kind = ctype.kind
    mysql = dialect == "mysql"
    sqlite = dialect == "sqlite"
    if kind == "uuid":
        if mysql:
            return Codec(
                encode=_nullable(lambda v: _as_uuid(v).bytes),
                decode=_nullable(lambda v: uuid.UUID(bytes=bytes(v))),
                stored=bytes,
            )
        return Codec(
            encode=_nullable(lambda v: str(_as_uuid(v))),
            decode=_nullable(lambda v: uuid.UUID(str(v))),
            stored=str,
        )
    if kind == "json":
        return Codec(
            encode=_nullable(canonical_json),
            decode=_nullable(_json_loads_if_text),
            stored=lambda v: canonical_json(_json_loads_if_text(v)),
        )
    if kind == "blob":
        return Codec(
            encode=_nullable(blob.pack),
            decode=_nullable(lambda v: blob.unpack(bytes(v))),
            stored=bytes,
        )
    if kind == "bytes":
        return Codec(encode=_nullable(bytes), decode=_nullable(bytes), stored=bytes)
    if kind == "datetime":
        trunc = _truncate_datetime(ctype.precision or 0)
        if sqlite:
            return Codec(
                encode=_nullable(lambda v: _sqlite_datetime(trunc(v))),
                decode=_nullable(lambda v: dt.datetime.fromisoformat(v)),
                stored=lambda v: _sqlite_datetime(dt.datetime.fromisoformat(v)),
            )
        return Codec(encode=_nullable(trunc), decode=_identity)
    if kind == "date":
        if sqlite:
            return Codec(
                encode=_nullable(lambda v: v.isoformat()),
                decode=_nullable(dt.date.fromisoformat),
            )
        return Codec(encode=_identity, decode=_identity)
    if kind == "decimal":
        quantum = decimal.Decimal(1).scaleb(-(ctype.scale or 0))

        def quantize(v: Any) -> decimal.Decimal:
            return decimal.Decimal(v).quantize(quantum)

        if sqlite:
            # SQLite's NUMERIC affinity would turn decimals into lossy floats: keep text.
            return Codec(
                encode=_nullable(lambda v: str(quantize(v))),
                decode=_nullable(decimal.Decimal),
                stored=str,
            )
        return Codec(encode=_nullable(quantize), decode=_identity, stored=quantize)
    if kind == "bool":
        if dialect == "postgresql":
            return Codec(encode=_nullable(bool), decode=_nullable(bool), stored=bool)
        return Codec(encode=_nullable(int), decode=_nullable(bool), stored=int)
    if kind == "float32":
        # Decoded to the stored single-precision value, the same on every backend (PostgreSQL
        # prints the shortest repr, MySQL is read as DOUBLE: see Database.select_column).
        return Codec(encode=_nullable(_float32), decode=_nullable(_float32), stored=_float32)
    if kind == "float64":
        return Codec(encode=_nullable(float), decode=_nullable(float), stored=float)
    if kind in ("int8", "int16", "int32", "int64"):
        return Codec(encode=_nullable(int), decode=_nullable(int), stored=int)
    # varchar, char, text, enum
    return Codec(encode=_nullable(_as_text), decode=_identity, stored=str)


def _as_text(v: Any) -> str:
    return str(v.value) if isinstance(v, enum.Enum) else str(v)


def _as_uuid(v: Any) -> uuid.UUID:
    return v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))
