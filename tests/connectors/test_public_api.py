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
    "SinglePage",
    "Stream",
    "StreamSettings",
    "Streams",
    "TableOverride",
    "TokenAuth",
    "field_at",
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


# Each built-in connector, and the connector-private modules it may import besides the API
# (its own package; the tabular helpers the files and sql connectors share).
BUILT_INS = {
    "alyx": {"alyx"},
    "pyrat": {"pyrat"},
    "rest": {"rest"},
    "files.py": {"filereaders", "tabular"},
    "sql.py": {"tabular"},
    "tabular.py": set(),
    "filereaders.py": {"files", "tabular"},
}


def test_the_built_in_connectors_import_only_the_author_api() -> None:
    root = Path(limsync.connectors.__file__).parent
    for name, own in BUILT_INS.items():
        where = root / name
        paths = sorted(where.glob("*.py")) if where.is_dir() else [where]
        assert paths, name
        for path in paths:
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom) or not node.module:
                    continue
                parts = node.module.split(".")
                if parts[:2] == ["limsync", "connectors"] and len(parts) > 2:
                    assert parts[2] in own, f"{name}/{path.name} imports {node.module}"
                if node.module == "limsync.connectors":
                    for alias in node.names:
                        assert alias.name in AUTHOR_API, f"{name}/{path.name}: {alias.name}"
