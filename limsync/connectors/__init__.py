"""The source side of limsync, and the stable API for connector authors. Never imports the
database side.

Everything a connector needs is importable from here, and only the names in ``__all__`` are
the author API (``tests/connectors/test_public_api.py`` guards the list; the modules behind it
are private and may change):

* declaring: :class:`Connector`, :class:`ConnectorSettings`, :class:`StreamSettings`,
  :class:`Stream`, :class:`Streams`, :class:`Cursor`;
* reading: :class:`ReadContext`, :data:`Key`, :data:`Page`, :data:`Record`,
  :func:`nothing_known`, :class:`CheckResult`;
* paging: :class:`Paginator` and :class:`LimitOffset`, :class:`HeaderTotal`,
  :class:`PageNumber`, :class:`NextLink`, :class:`SinglePage`; :func:`field_at` (a dotted
  field of a JSON body, as the paginators read records, counts and links);
* HTTP: the auth helpers :class:`BearerAuth`, :class:`TokenAuth`, :class:`HeaderAuth`,
  :class:`BasicAuth`; :func:`send` and :func:`raise_for_response` (a request with limsync's
  error translation), :func:`redact_url` and :func:`response_detail` (for messages);
* :class:`TableOverride`, the engine-side mapping override a stream's settings carry.

The engine calls :meth:`Connector.read`, :meth:`Connector.cursor_value` and
:meth:`Connector.confirm_gone`. Connector classes are found by type name through the
``limsync.connectors`` entry-point group (:mod:`limsync.connectors.registry`). The guide is
``docs/authoring.md``; the contract test suite is :mod:`limsync.testing.contract`.
"""

from limsync.connectors.auth import BasicAuth, BearerAuth, HeaderAuth, TokenAuth
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
    nothing_known,
)
from limsync.connectors.http import raise_for_response, redact_url, response_detail, send
from limsync.connectors.pagination import (
    HeaderTotal,
    LimitOffset,
    NextLink,
    Page,
    PageNumber,
    Paginator,
    Record,
    SinglePage,
    field_at,
)

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "CheckResult",
    "Connector",
    "ConnectorSettings",
    "Cursor",
    "HeaderAuth",
    "HeaderTotal",
    "Key",
    "LimitOffset",
    "NextLink",
    "Page",
    "PageNumber",
    "Paginator",
    "ReadContext",
    "Record",
    "SinglePage",
    "Stream",
    "StreamSettings",
    "Streams",
    "TableOverride",
    "TokenAuth",
    "field_at",
    "nothing_known",
    "raise_for_response",
    "redact_url",
    "response_detail",
    "send",
]
