"""The parts of the fake PyRAT: the colony (data, generator, changes) and the list grammar.
:class:`~limsync.testing.fake_pyrat.FakePyrat` serves them."""
