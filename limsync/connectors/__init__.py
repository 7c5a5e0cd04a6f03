"""The source side of limsync: connectors that read LIMS APIs. Never imports the database side.

Connector authors subclass :class:`Connector` and declare :class:`Stream` objects; the engine
calls :meth:`Connector.read`, :meth:`Connector.cursor_value` and :meth:`Connector.confirm_gone`.
Connector classes are found by type name through :mod:`limsync.connectors.registry`.
"""

from limsync.connectors.base import (
    CheckResult,
    Connector,
    ConnectorSettings,
    Cursor,
    Key,
    ReadContext,
    Stream,
    Streams,
    StreamSettings,
    TableOverride,
)
from limsync.connectors.pagination import (
    HeaderTotal,
    LimitOffset,
    NextLink,
    PageNumber,
    Paginator,
)

__all__ = [
    "CheckResult",
    "Connector",
    "ConnectorSettings",
    "Cursor",
    "HeaderTotal",
    "Key",
    "LimitOffset",
    "NextLink",
    "PageNumber",
    "Paginator",
    "ReadContext",
    "Stream",
    "StreamSettings",
    "Streams",
    "TableOverride",
]
