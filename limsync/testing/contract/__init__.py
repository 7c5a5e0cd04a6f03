"""The connector contract: a pytest test suite every HTTP connector inherits.

An author's whole test file is one small class (this module needs ``pytest``, which limsync
itself does not depend on)::

    from limsync.testing.contract import ConnectorContract

    from mylims_limsync import MyLimsConnector
    from mylims_limsync.fake import make_fake_server


    class TestMyLimsContract(ConnectorContract):
        connector_class = MyLimsConnector
        settings = {"type": "mylims", "token": "s3cret"}  # base_url: the fake server's URL
        server_factory = make_fake_server  # returns a FakeServer (not started)

Each ``test_*`` method is one check, run against a fresh fake server:

=====================================  =========================================================
check                                  what it requires
=====================================  =========================================================
test_settings_reject_empty             ``{"type": ...}`` alone is refused with a ConfigError
                                       naming a missing setting
test_settings_reject_wrong             an unknown setting, a missing required one and a value
                                       of the wrong type are refused, each named, no secret shown
test_streams_declare_valid_keys        key fields are required fields of scalar type (str, int,
                                       UUID, date, datetime, Decimal, enum; not float or lists)
test_streams_yield_valid_records       a full read of every stream yields records (at least one)
                                       that validate against the stream's model
test_keys_unique_and_non_null          no key has a None part; no two records share a key
                                       (keys compared as tuples)
test_pagination_terminates             at a page size of ``page_size`` (2) every stream ends, in
                                       a bounded number of pages, with each record exactly once
test_pagination_detects_loops          when the server ignores paging (answers every request with
                                       the first page) the read fails with a LimsyncError
                                       instead of looping or silently losing records
test_retries_throttling_and_server_    429, 502, 503 and 504 answers are retried and the read
errors                                 succeeds
test_does_not_retry_client_errors      400 and 404 answers fail the read (a retry would hide a
                                       bug and hammer the server)
test_cursor_advances                   after a sync the stream's cursor is stored; after a record
                                       changes, an incremental sync sees it and moves the cursor
test_cursor_round_trip                 the highest cursor value, stored in limsync's state and read
                                       back, starts an incremental read that includes the record(s)
                                       at that value
test_second_sync_writes_nothing        a second full sync of unchanged data reports nothing new,
                                       changed, written, gone or deleted
test_deleted_record_is_detected        after one record is deleted at the source, a full sync
                                       reports exactly one record gone
=====================================  =========================================================

The three sync checks run the connector through the real engine into a temporary SQLite
database. They do not use the connector's default mapping: the contract tests the connector,
not a pipeline, so every stream is written to a generated table ``contract.<stream>`` whose
primary key is the stream's key (one ``varchar(255)`` column per key field, holding
``str(value)``) and whose ``record`` column holds the validated record as JSON.

Fast settings are applied under the author's: no backoff between retries and no client-side
rate limit (``FAST_SETTINGS``). The hooks :meth:`ConnectorContract.delete_record` and
:meth:`ConnectorContract.change_record` change the fake server's data; their defaults work for
a :class:`~limsync.testing.toolkit.RecordServer`, other fakes override them.

The checks live in modules named after their theme (``settings``, ``records``, ``pagination``,
``http_errors``, ``cursors``, ``syncs``), on top of ``harness`` (the attributes, hooks and
building blocks they share); :class:`ConnectorContract` combines them. Import it from here.
"""

from __future__ import annotations

from limsync.testing.contract.cursors import CursorChecks
from limsync.testing.contract.harness import ContractHarness
from limsync.testing.contract.http_errors import HttpErrorChecks
from limsync.testing.contract.pagination import PaginationChecks
from limsync.testing.contract.records import RecordChecks
from limsync.testing.contract.settings import SettingsChecks
from limsync.testing.contract.support import FAST_SETTINGS, ContractError
from limsync.testing.contract.syncs import SyncChecks
from limsync.testing.contract.tables import record_tables

__all__ = ["FAST_SETTINGS", "ConnectorContract", "ContractError", "record_tables"]


class ConnectorContract(
    SettingsChecks,
    RecordChecks,
    PaginationChecks,
    HttpErrorChecks,
    CursorChecks,
    SyncChecks,
    ContractHarness,
):
    """Base class of a connector's contract tests; see the module docstring.

    Set ``connector_class``, ``settings`` and ``server_factory``; optionally the other class
    attributes (``url_setting``, ``contract_streams``, ``page_size``, ``delete_stream``,
    ``max_pages``), and override :meth:`delete_record` / :meth:`change_record` for a fake
    server that is not a :class:`~limsync.testing.toolkit.RecordServer`.
    """
