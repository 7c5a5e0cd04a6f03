"""Declaration and record checks: valid keys, valid records, unique non-null keys."""

from __future__ import annotations

from collections import Counter

from limsync.testing.contract.harness import ContractHarness
from limsync.testing.contract.support import fail, key_type_ok
from limsync.testing.fakeserver import FakeServer


class RecordChecks(ContractHarness):
    """``test_streams_declare_valid_keys``, ``test_streams_yield_valid_records`` and
    ``test_keys_unique_and_non_null``."""

    def test_streams_declare_valid_keys(self, contract_server: FakeServer) -> None:
        """Key fields are required model fields of a type that identifies records exactly."""
        connector = self.make_connector(contract_server)
        for name in self.streams_of(connector):
            decl = connector.stream(name)
            fields = decl.model.model_fields
            if not decl.key:
                fail(f"stream {name!r} declares no key")
            for field in decl.key:
                info = fields.get(field)
                if info is None:
                    fail(f"stream {name!r}: key field {field!r} is not on {decl.model.__name__}")
                if not info.is_required():
                    fail(
                        f"stream {name!r}: key field {field!r} has a default, so a record "
                        "without it would get a made-up key; make it required"
                    )
                if not key_type_ok(info.annotation):
                    fail(
                        f"stream {name!r}: key field {field!r} is {info.annotation!r}; keys "
                        "must be str, int, UUID, date, datetime, Decimal or an enum"
                    )
            if decl.volatile & set(decl.key):
                fail(f"stream {name!r}: a key field is declared volatile")
            if decl.cursor is not None and decl.cursor.field not in fields:
                fail(f"stream {name!r}: cursor field {decl.cursor.field!r} is not on the model")

    def test_streams_yield_valid_records(self, contract_server: FakeServer) -> None:
        """A full read of each stream yields at least one record, each one valid."""
        connector = self.make_connector(contract_server)
        with connector:
            for name in self.streams_of(connector):
                records = self.read_all(connector, name)
                if not records:
                    fail(
                        f"stream {name!r} yielded no records: give the fake server data for it "
                        "(the contract cannot check an empty stream)"
                    )
                self.validated(connector, name, records)

    def test_keys_unique_and_non_null(self, contract_server: FakeServer) -> None:
        """No key has a None part and no two records of a stream share a key (as tuples)."""
        connector = self.make_connector(contract_server)
        with connector:
            for name in self.streams_of(connector):
                keys = self.keys(connector, name, self.read_all(connector, name))
                nulls = [k for k in keys if any(part is None for part in k)]
                if nulls:
                    fail(
                        f"stream {name!r}: {len(nulls)} record(s) have a null key, e.g. {nulls[0]}"
                    )
                repeated = [k for k, n in Counter(keys).items() if n > 1]
                if repeated:
                    fail(
                        f"stream {name!r}: {len(repeated)} key(s) are shared by several records, "
                        f"e.g. {repeated[0]}"
                    )
