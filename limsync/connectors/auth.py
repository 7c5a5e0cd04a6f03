"""Authentication helpers for HTTP connectors: ``requests`` auth objects holding SecretStr values.

Set one on the connector's session when it opens; every request then carries the credential,
and the secret stays a :class:`~pydantic.SecretStr` (masked in ``repr``) until the moment a
request is sent::

    class MyLimsConnector(Connector):
        ...

        def open(self) -> None:
            self.session.auth = BearerAuth(self.settings.token)
            super().open()

:class:`HeaderAuth` covers API keys in any header (``X-Api-Key: ...``), :class:`BearerAuth`
OAuth-style bearer tokens, :class:`TokenAuth` Django REST framework's ``Token ...`` and
:class:`BasicAuth` a username and password.
"""

from __future__ import annotations

import base64

import requests
from pydantic import SecretStr

__all__ = ["BasicAuth", "BearerAuth", "HeaderAuth", "TokenAuth"]


def _secret(value: SecretStr | str) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


class HeaderAuth(requests.auth.AuthBase):
    """Sends ``header: {prefix}{secret}`` with every request."""

    def __init__(self, header: str, secret: SecretStr | str, prefix: str = "") -> None:
        self.header = header
        self.prefix = prefix
        self._secret = _secret(secret)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[self.header] = f"{self.prefix}{self._secret.get_secret_value()}"
        return request

    def __repr__(self) -> str:
        return f"{type(self).__name__}(header={self.header!r}, secret=**********)"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HeaderAuth)
            and (self.header, self.prefix) == (other.header, other.prefix)
            and self._secret == other._secret
        )

    def __hash__(self) -> int:
        return hash((self.header, self.prefix))


class BearerAuth(HeaderAuth):
    """``Authorization: Bearer <token>``."""

    def __init__(self, token: SecretStr | str) -> None:
        super().__init__("Authorization", token, "Bearer ")


class TokenAuth(HeaderAuth):
    """``Authorization: Token <token>`` (Django REST framework's TokenAuthentication)."""

    def __init__(self, token: SecretStr | str) -> None:
        super().__init__("Authorization", token, "Token ")


class BasicAuth(HeaderAuth):
    """HTTP basic authentication from a username and a secret password."""

    def __init__(self, username: str, password: SecretStr | str) -> None:
        self.username = username
        pair = f"{username}:{_secret(password).get_secret_value()}".encode()
        super().__init__("Authorization", base64.b64encode(pair).decode("ascii"), "Basic ")

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=**********)"
