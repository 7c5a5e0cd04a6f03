"""Test kit shipped with limsync: fake LIMS servers on 127.0.0.1 with fault injection.

``FakeAlyx`` serves a deterministic ``Colony`` over a real HTTP server; ``Faults`` makes any fake
built on :mod:`limsync.testing.fakeserver` fail on demand.
"""

from limsync.testing.alyx.colony import Colony
from limsync.testing.fake_alyx import FakeAlyx
from limsync.testing.fakeserver import Faults

__all__ = ["Colony", "FakeAlyx", "Faults"]
