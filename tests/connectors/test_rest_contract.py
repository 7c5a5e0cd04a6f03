"""The connector contract (limsync.testing.contract) on a declarative REST connector.

The connector class is the generic ``rest`` one; what is checked is the instance its settings
define, reading the fake LIMS: token login, limit/offset paging, a cursor, and a child stream
listed once per parent record.
"""

from __future__ import annotations

from limsync.connectors.rest import RestConnector
from limsync.testing.contract import ConnectorContract
from limsync.testing.fake_lims import FakeLims


def small_lims() -> FakeLims:
    """Five animals with two weighings each: several pages at page size 2, quick to read."""
    return FakeLims(n_animals=5, weights_per_animal=2)


class TestRestContract(ConnectorContract):
    connector_class = RestConnector
    settings = {
        "type": "rest",
        "auth": {
            "type": "token_login",
            "path": "/auth/login",
            "username": FakeLims.USERNAME,
            "password": FakeLims.PASSWORD,
        },
        "streams": {
            "strains": {"path": "/strains", "key": ["id"]},
            "animals": {
                "path": "/animals",
                "key": ["id"],
                "cursor": {"field": "modified", "param": "modified_after", "lookback": "1h"},
                "volatile": ["age_days"],
            },
            "weights": {
                "path": "/animals/{animal_id}/weights",
                "parent": {"stream": "animals", "fields": {"animal_id": "id"}},
                "key": ["animal_id", "id"],
                "records": "",
                "pagination": {"style": "none"},
            },
        },
    }
    server_factory = staticmethod(small_lims)
    delete_stream = "animals"
