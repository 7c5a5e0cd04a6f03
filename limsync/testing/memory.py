"""An in-process source: a connector whose records live in Python lists.

For engine tests and the engine-only benchmark: it exercises everything the engine does
(validation, hashing, ledger, mapping, upsert, deletes) without HTTP. Records are plain dicts per
stream; tests change them between runs exactly as a LIMS would change its data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from limsync.connectors.base import Connector, ConnectorSettings, Key, ReadContext
from limsync.connectors.pagination import Page


class MemorySettings(ConnectorSettings):
    """Settings of a :class:`MemoryConnector` (``type = "memory"``)."""

    type: str = "memory"


class MemoryConnector(Connector, abstract=True):
    """Base for in-memory connectors: subclasses declare ``streams`` and ``type_name``.

    ``data`` maps stream name -> list of raw records; ``page_size`` controls how many records
    each yielded page holds.
    """

    settings_model: ClassVar[type[ConnectorSettings]] = MemorySettings

    def __init__(
        self,
        name: str,
        settings: ConnectorSettings,
        *,
        data: Mapping[str, list[dict[str, Any]]] | None = None,
        session: Any = None,
    ) -> None:
        super().__init__(name, settings, session=session)
        self.data: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in (data or {}).items()}
        self.reads: list[tuple[str, bool, str | None]] = []

    def open(self) -> None:
        """Nothing to authenticate."""

    def read(self, stream: str, ctx: ReadContext) -> Iterator[Page]:
        """The stream's records in pages; incremental reads honour a cursor field."""
        self.reads.append((stream, ctx.full, ctx.cursor))
        decl = self.stream(stream)
        records = self.data.get(stream, [])
        if not ctx.full and decl.cursor is not None and ctx.cursor is not None:
            records = [r for r in records if str(r.get(decl.cursor.field)) >= ctx.cursor]
        size = self.page_size(stream)
        for start in range(0, len(records), size):
            yield [dict(r) for r in records[start : start + size]]

    def cursor_value(self, stream: str, record: dict[str, Any]) -> str | None:
        """The cursor field's value as a string."""
        decl = self.stream(stream)
        if decl.cursor is None or record.get(decl.cursor.field) is None:
            return None
        return str(record[decl.cursor.field])

    def confirm_gone(self, stream: str, keys: Sequence[Key]) -> set[Key]:
        """Missing from a full scan of a list means gone."""
        return set(keys)
