"""The connector contract (limsync.testing.contract) on the built-in PyRAT connector."""

from __future__ import annotations

from limsync.connectors import Connector
from limsync.connectors.pyrat import PyratConnector
from limsync.testing.contract import ConnectorContract
from limsync.testing.fake_pyrat import FakePyrat
from limsync.testing.fakeserver import FakeServer
from limsync.testing.pyrat.colony import PyratColony


def small_pyrat() -> FakePyrat:
    """A small colony: several pages per stream at page size 2, quick to read."""
    return FakePyrat(PyratColony.generate(seed=3, n_animals=8, n_pups=3))


class TestPyratContract(ConnectorContract):
    connector_class = PyratConnector
    settings = {
        "type": "pyrat",
        "client_token": FakePyrat.CLIENT_TOKEN,
        "user_token": FakePyrat.USER_TOKEN,
        "detail_workers": 2,
    }
    server_factory = small_pyrat
    delete_stream = "animals"

    def delete_record(self, server: FakeServer, connector: Connector, stream: str) -> None:
        assert isinstance(server, FakePyrat) and stream == "animals"
        server.colony.delete_animal(server.colony.animals[-1]["animalid"])
