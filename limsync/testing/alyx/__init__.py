"""The parts of the fake Alyx: record models, the store and colony, the generator, ``?django=``
lookups, endpoint filters and REST rendering. :class:`~limsync.testing.fake_alyx.FakeAlyx` serves
them; most users only need :class:`~limsync.testing.alyx.colony.Colony`."""
