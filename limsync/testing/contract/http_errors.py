"""HTTP error checks: throttling and server errors are retried, client errors are not."""

from __future__ import annotations

from limsync.errors import LimsyncError
from limsync.testing.contract.harness import ContractHarness
from limsync.testing.contract.support import fail
from limsync.testing.fakeserver import FakeServer


class HttpErrorChecks(ContractHarness):
    """``test_retries_throttling_and_server_errors`` and ``test_does_not_retry_client_errors``."""

    def test_retries_throttling_and_server_errors(self, contract_server: FakeServer) -> None:
        """429, 502, 503 and 504 answers are retried; the read then succeeds."""
        connector = self.make_connector(contract_server)
        with connector:
            name = self.probe_stream(connector)
            expected = sorted(map(repr, self.keys(connector, name, self.read_all(connector, name))))
            for status in (429, 502, 503, 504):
                contract_server.reset_counters()
                if status == 429:
                    contract_server.faults.set(throttle=2, retry_after=0)
                else:
                    contract_server.faults.set(error_burst=2, error_status=status)
                try:
                    records = self.read_all(connector, name)
                except LimsyncError as exc:
                    fail(f"stream {name!r}: two {status} answers were not retried: {exc}")
                finally:
                    contract_server.faults.reset()
                faulted = [r for r in contract_server.request_log if r.fault]
                if len(faulted) != 2:
                    fail(f"stream {name!r}: the server answered {status} {len(faulted)} times")
                got = sorted(map(repr, self.keys(connector, name, records)))
                if got != expected:
                    fail(f"stream {name!r}: after retrying {status}, the records differ")

    def test_does_not_retry_client_errors(self, contract_server: FakeServer) -> None:
        """A 400 or 404 answer fails the read with a LimsyncError; it is not retried."""
        connector = self.make_connector(contract_server)
        with connector:
            name = self.probe_stream(connector)
            self.read_all(connector, name)  # authenticated, warmed up
            for status in (400, 404):
                # One error only: a client that retries gets a good answer the second time, so
                # its read succeeds, which is how the retry shows.
                contract_server.faults.set(error_burst=1, error_status=status)
                try:
                    self.read_all(connector, name)
                except LimsyncError:
                    continue
                finally:
                    contract_server.faults.reset()
                fail(
                    f"stream {name!r}: a {status} answer was retried (the read succeeded); "
                    "client errors must fail the read"
                )
