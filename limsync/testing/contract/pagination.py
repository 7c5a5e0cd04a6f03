"""Pagination checks: every read ends with each record once, and a repeating server is caught."""

from __future__ import annotations

from collections import Counter

from limsync.connectors import Connector
from limsync.errors import LimsyncError
from limsync.testing.contract.harness import ContractHarness
from limsync.testing.contract.support import PageBudgetExceededError, fail
from limsync.testing.fakeserver import PAGING_PARAMS, FakeServer


class PaginationChecks(ContractHarness):
    """``test_pagination_terminates`` and ``test_pagination_detects_loops``."""

    def test_pagination_terminates(self, contract_server: FakeServer) -> None:
        """At a small page size each stream ends and yields every record exactly once."""
        connector = self.make_connector(contract_server)
        small = self.make_connector(contract_server, page_size=self.page_size)
        with connector, small:
            for name in self.streams_of(connector):
                expected = Counter(self.keys(connector, name, self.read_all(connector, name)))
                budget = 2 * sum(expected.values()) + 10
                try:
                    got = Counter(
                        self.keys(small, name, self.read_all(small, name, max_pages=budget))
                    )
                except PageBudgetExceededError as exc:
                    fail(str(exc))
                if got != expected:
                    lost = sum((expected - got).values())
                    extra = sum((got - expected).values())
                    fail(
                        f"stream {name!r} at page size {self.page_size}: {lost} record(s) "
                        f"missing and {extra} extra compared with a read at the default size"
                    )

    def test_pagination_detects_loops(self, contract_server: FakeServer) -> None:
        """A server that ignores the paging parameters makes the read fail, not loop."""
        connector = self.make_connector(contract_server, page_size=self.page_size)
        checked = 0
        with connector:
            for name in self.streams_of(connector):
                normal = Counter(self.keys(connector, name, self.read_all(connector, name)))
                count = sum(normal.values())
                if count <= self.page_size:
                    continue  # one page: nothing to repeat
                budget = 2 * count + 10
                contract_server.faults.set(
                    repeat_first_page=True, paging_params=self._paging_params(connector, name)
                )
                try:
                    records = self.read_all(connector, name, max_pages=budget)
                except PageBudgetExceededError:
                    fail(
                        f"stream {name!r}: with the server answering every page request with "
                        f"the first page, the read did not end after {budget} pages; detect "
                        "repeated pages (the built-in paginators raise PaginationError)"
                    )
                except LimsyncError:
                    checked += 1  # detected
                    continue
                finally:
                    contract_server.faults.set(repeat_first_page=False)
                if Counter(self.keys(connector, name, records)) == normal:
                    continue  # each listing fit in one page (e.g. one per parent): no repeat
                fail(
                    f"stream {name!r}: with the server answering every page request with the "
                    f"first page, the read ended normally with {len(records)} of {count} "
                    "records instead of raising PaginationError"
                )
        if not checked:
            fail(
                f"no stream read more than one page at page_size={self.page_size}: give the "
                "fake server more data so that paging can be checked"
            )

    def _paging_params(self, connector: Connector, stream: str) -> frozenset[str]:
        """The fault's default paging parameters plus those the stream's paginator sends."""
        names = set(PAGING_PARAMS)
        try:
            paginator = connector.paginator_for(stream)
        except NotImplementedError:  # a connector that reads without a paginator
            return frozenset(names)
        for attr in ("limit_param", "offset_param", "page_param", "size_param"):
            value = getattr(paginator, attr, None)
            if isinstance(value, str):
                names.add(value)
        return frozenset(names)
