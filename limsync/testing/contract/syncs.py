"""Sync checks through the real engine: a second identical sync writes nothing, and a deleted
source record is reported gone."""

from __future__ import annotations

from pathlib import Path

from limsync.testing.contract.harness import ContractHarness
from limsync.testing.contract.support import fail, summary
from limsync.testing.fakeserver import FakeServer


class SyncChecks(ContractHarness):
    """``test_second_sync_writes_nothing`` and ``test_deleted_record_is_detected``."""

    def test_second_sync_writes_nothing(self, contract_server: FakeServer, tmp_path: Path) -> None:
        """A second full sync of unchanged data reports nothing new, changed, written or gone."""
        connector = self.make_connector(contract_server)
        names = self.streams_of(connector)
        with self.pipeline(connector, tmp_path) as engine:
            first = self.sync(engine, names)
            for sr in first.streams:
                if sr.error:
                    fail(f"stream {sr.stream!r}: the first sync failed: {sr.error}")
            if sum(sr.new for sr in first.streams) == 0:
                fail("the first sync stored no record")
            second = self.sync(engine, names)
            for sr in second.streams:
                wrote = sr.new or sr.changed or sr.rows_written or sr.gone or sr.deleted
                if sr.error or wrote:
                    detail = sr.error or summary(sr)
                    hint = (
                        "; a field that changes on every read (a timestamp, a computed value) "
                        "must be declared volatile"
                        if sr.changed
                        else ""
                    )
                    fail(f"stream {sr.stream!r}: the second identical sync: {detail}{hint}")

    def test_deleted_record_is_detected(self, contract_server: FakeServer, tmp_path: Path) -> None:
        """After one record is deleted at the source, a full sync reports exactly one gone."""
        connector = self.make_connector(contract_server)
        name = self.delete_stream or self.probe_stream(connector)
        with self.pipeline(connector, tmp_path) as engine:
            first = self.sync(engine, [name]).streams[0]
            if first.error:
                fail(f"stream {name!r}: the first sync failed: {first.error}")
            self.delete_record(contract_server, connector, name)
            second = self.sync(engine, [name]).streams[0]
            if second.error:
                fail(f"stream {name!r}: the sync after a delete failed: {second.error}")
            if second.gone != 1:
                fail(
                    f"stream {name!r}: one record was deleted at the source, but the sync "
                    f"reports {second.gone} gone ({summary(second)}); confirm_gone() must "
                    "return the keys that are really gone"
                )
