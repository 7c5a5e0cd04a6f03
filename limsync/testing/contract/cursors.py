"""Cursor checks: a sync stores the cursor and moves it; a stored cursor starts a complete read."""

from __future__ import annotations

from pathlib import Path

from limsync.errors import LimsyncError
from limsync.pipeline import ledger, state
from limsync.testing.contract.harness import ContractHarness
from limsync.testing.contract.support import cursor_order, fail, summary
from limsync.testing.fakeserver import FakeServer


class CursorChecks(ContractHarness):
    """``test_cursor_advances`` and ``test_cursor_round_trip``."""

    def test_cursor_advances(self, contract_server: FakeServer, tmp_path: Path) -> None:
        """A sync stores the cursor; after a change, an incremental sync sees it and moves it."""
        connector = self.make_connector(contract_server)
        for name in self.cursor_streams(connector):
            with self.pipeline(connector, tmp_path) as engine:
                first = self.sync(engine, [name]).streams[0]
                if first.error:
                    fail(f"stream {name!r}: the first sync failed: {first.error}")
                before = self.stored_cursor(engine, name)
                if before is None:
                    fail(
                        f"stream {name!r}: no cursor was stored after a sync of {first.read} "
                        "records; cursor_value() gives None for every record"
                    )
                self.change_record(contract_server, connector, name)
                second = self.sync(engine, [name], full=False).streams[0]
                if second.error:
                    fail(f"stream {name!r}: the incremental sync failed: {second.error}")
                after = self.stored_cursor(engine, name)
                if second.changed + second.new < 1:
                    fail(
                        f"stream {name!r}: the incremental sync after a change did not see "
                        f"it ({summary(second)})"
                    )
                if after is None or cursor_order(after) <= cursor_order(before):
                    fail(
                        f"stream {name!r}: the cursor did not advance after a change "
                        f"({before!r} -> {after!r})"
                    )

    def test_cursor_round_trip(self, contract_server: FakeServer, tmp_path: Path) -> None:
        """The highest cursor, stored and read back, starts a read that includes its record."""
        connector = self.make_connector(contract_server)
        with connector, self.pipeline(connector, tmp_path) as engine:
            for name in self.cursor_streams(connector):
                records = self.read_all(connector, name)
                values = [(connector.cursor_value(name, r), r) for r in records]
                present = [(v, r) for v, r in values if v is not None]
                if not present:
                    fail(f"stream {name!r}: cursor_value() gives None for every record")
                top = max((v for v, _ in present), key=cursor_order)
                st = state.ensure(engine.db)
                with engine.db.transaction() as conn:
                    ledger.set_cursor(conn, st, connector.name, name, top)
                back = self.stored_cursor(engine, name)
                if back != top:
                    fail(f"stream {name!r}: cursor {top!r} came back from storage as {back!r}")
                decl = connector.stream(name)
                try:
                    since = self.read_all(connector, name, full=False, cursor=back)
                except LimsyncError as exc:
                    fail(f"stream {name!r}: an incremental read from cursor {back!r} failed: {exc}")
                wanted = {repr(decl.key_from_raw(r)) for v, r in present if v == top}
                got = {repr(k) for k in self.keys(connector, name, since)}
                missing = wanted - got
                if missing:
                    fail(
                        f"stream {name!r}: an incremental read from cursor {back!r} misses the "
                        f"record(s) at that value ({sorted(missing)[0]}); filter with >=, "
                        "not >, and subtract the lookback"
                    )
