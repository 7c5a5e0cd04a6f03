"""Test kit shipped with limsync: fake LIMS servers on 127.0.0.1 with fault injection.

``FakeAlyx`` serves a deterministic ``Colony`` over a real HTTP server; ``Faults`` makes any fake
built on :mod:`limsync.testing.fakeserver` fail on demand. Connector authors build their own
fake from a few lines with :class:`~limsync.testing.toolkit.RecordServer`, and inherit the
contract test suite :class:`limsync.testing.contract.ConnectorContract` (that module needs
``pytest``, so it is not imported here).
"""

from limsync.testing.alyx.colony import Colony
from limsync.testing.fake_alyx import FakeAlyx
from limsync.testing.fakeserver import Faults
from limsync.testing.toolkit import RecordServer, make_records

__all__ = ["Colony", "FakeAlyx", "Faults", "RecordServer", "make_records"]
