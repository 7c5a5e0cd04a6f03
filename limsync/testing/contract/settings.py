"""Settings checks: an empty or wrong configuration is refused, each problem named, no secret
shown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic
from pydantic import SecretStr

from limsync.errors import ConfigError
from limsync.testing.contract.harness import ContractHarness
from limsync.testing.contract.support import WRONG_VALUE, fail
from limsync.testing.fakeserver import FakeServer


class SettingsChecks(ContractHarness):
    """``test_settings_reject_empty`` and ``test_settings_reject_wrong``."""

    def _settings_error(self, data: Mapping[str, Any]) -> str | None:
        try:
            self.connector_class.parse_settings(data, name="contract")
        except ConfigError as exc:
            return str(exc)
        return None

    def _secrets(self, server: FakeServer) -> list[str]:
        parsed = self.connector_class.parse_settings(self.settings_for(server), name="contract")
        return [
            value.get_secret_value()
            for name in type(parsed).model_fields
            if isinstance(value := getattr(parsed, name), SecretStr)
            and len(value.get_secret_value()) >= 4
        ]

    def test_settings_reject_empty(self, contract_server: FakeServer) -> None:
        """``{"type": ...}`` alone is refused with a message naming a missing setting."""
        cls = self.connector_class
        message = self._settings_error({"type": cls.type_name})
        if message is None:
            fail(
                f"{cls.settings_model.__name__} accepts an empty configuration "
                f"({{'type': {cls.type_name!r}}}): make the settings a connector cannot work "
                "without (where to read, credentials) required fields"
            )
        required = [
            n for n, f in cls.settings_model.model_fields.items() if f.is_required() and n != "type"
        ]
        if required and not any(n in message for n in required):
            fail(f"the error for an empty configuration names none of {required}: {message}")

    def test_settings_reject_wrong(self, contract_server: FakeServer) -> None:
        """Unknown, missing and mistyped settings are refused, each named, no secret echoed."""
        cls = self.connector_class
        valid = self.settings_for(contract_server)
        if (message := self._settings_error(valid)) is not None:
            fail(f"the contract's own settings are refused: {message}")
        fields = cls.settings_model.model_fields
        cases: list[tuple[str, dict[str, Any]]] = [
            ("no_such_setting", {**valid, "no_such_setting": 1})
        ]
        cases += [
            (n, {k: v for k, v in valid.items() if k != n})
            for n, f in fields.items()
            if f.is_required() and n in valid and n != "type"
        ]
        for name in valid:
            if name in ("type", "streams") or name not in fields:
                continue
            adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
                fields[name].annotation or Any
            )
            try:
                adapter.validate_python(WRONG_VALUE)
            except pydantic.ValidationError:
                cases.append((name, {**valid, name: WRONG_VALUE}))
        secrets = self._secrets(contract_server)
        for name, data in cases:
            message = self._settings_error(data)
            if message is None:
                fail(f"settings with a wrong or missing {name!r} are accepted: {data!r}")
            if name not in message:
                fail(f"the error for a wrong or missing {name!r} does not name it: {message}")
            if any(secret in message for secret in secrets):
                fail(f"the error for a wrong or missing {name!r} shows a secret value")
