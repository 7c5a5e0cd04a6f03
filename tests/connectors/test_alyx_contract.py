"""The connector contract (limsync.testing.contract) on the built-in Alyx connector."""

from __future__ import annotations

from limsync.connectors import Connector
from limsync.connectors.alyx import AlyxConnector
from limsync.testing import Colony, FakeAlyx
from limsync.testing.contract import ConnectorContract
from limsync.testing.fakeserver import FakeServer


def small_alyx() -> FakeAlyx:
    """A small colony: every stream has a few pages at page size 2, and the reads stay quick."""
    colony = Colony.generate(
        seed=3,
        n_subjects=8,
        sessions_per_subject=1,
        weighings_per_subject=1,
        water_admins_per_subject=1,
    )
    return FakeAlyx(colony)


class TestAlyxContract(ConnectorContract):
    connector_class = AlyxConnector
    settings = {
        "type": "alyx",
        "username": FakeAlyx.DEFAULT_USERNAME,
        "password": FakeAlyx.DEFAULT_PASSWORD,
        "detail_workers": 2,
    }
    server_factory = small_alyx
    delete_stream = "sessions"

    def delete_record(self, server: FakeServer, connector: Connector, stream: str) -> None:
        assert isinstance(server, FakeAlyx) and stream == "sessions"
        server.colony.delete_session(server.colony.ids("session")[-1])

    def change_record(self, server: FakeServer, connector: Connector, stream: str) -> None:
        assert isinstance(server, FakeAlyx) and stream == "sessions"
        server.colony.modify_session(server.colony.ids("session")[0], narrative="changed")
