"""The connector author API: exactly the names in ``limsync.connectors.__all__``, and the
built-in connectors use nothing else from limsync's connector modules."""

from __future__ import annotations

import ast
from pathlib import Path

import limsync.connectors

AUTHOR_API = [
    "BasicAuth",
    "BearerAuth",
    "CheckResult",
    "Connector",
    "ConnectorSettings",
    "Cursor",
    "HeaderAuth",
    "HeaderTotal",
    "Key",
    "LimitOffset",
    "NextLink",
    "Page",
    "PageNumber",
    "Paginator",
    "ReadContext",
    "Record",
    "Stream",
    "StreamSettings",
    "Streams",
    "TableOverride",
    "TokenAuth",
    "nothing_known",
    "raise_for_response",
    "redact_url",
    "response_detail",
    "send",
]

#: limsync.connectors modules that are not the author API; a built-in may only use its own.
PRIVATE = ("auth", "base", "http", "pagination", "registry", "streams")


def test_the_author_api_is_exactly_the_listed_names() -> None:
    # Adding or removing a name is a deliberate API change: update this list with it.
    assert sorted(limsync.connectors.__all__) == AUTHOR_API
    for name in AUTHOR_API:
        assert getattr(limsync.connectors, name) is not None, name


def test_every_public_name_is_documented() -> None:
    for name in AUTHOR_API:
        obj = getattr(limsync.connectors, name)
        if callable(obj) and not isinstance(obj, type(tuple[int])):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_the_alyx_connector_imports_only_the_author_api() -> None:
    package = Path(limsync.connectors.__file__).parent / "alyx"
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["limsync", "connectors"] and len(parts) > 2:
                    assert parts[2] == "alyx", f"{path.name} imports {node.module}"
                    assert parts[2] not in PRIVATE
                if node.module == "limsync.connectors":
                    for alias in node.names:
                        assert alias.name in AUTHOR_API, f"{path.name}: {alias.name}"
