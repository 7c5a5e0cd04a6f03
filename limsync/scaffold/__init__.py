"""``limsync new-connector NAME``: a ready-to-install connector package whose tests pass.

:func:`generate` writes, from the templates in ``limsync/scaffold/templates``::

    limsync-NAME/
      pyproject.toml            the entry point in "limsync.connectors", pytest and ruff settings
      README.md
      src/limsync_NAME/
        __init__.py
        connector.py            settings, two example streams, bearer-token auth, a cursor
        fake.py                 a RecordServer with data for both streams
      tests/test_contract.py    the contract suite, inherited

The example talks to a generic JSON API (limit/offset paging, ``modified_since`` filter);
authors change it to theirs, keeping the contract tests green.
"""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path
from string import Template

from limsync.errors import ConfigError

__all__ = ["generate", "layout"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def _names(name: str) -> dict[str, str]:
    if not _NAME.match(name) or keyword.iskeyword(name) or len(name) > 40:
        raise ConfigError(
            f"connector name {name!r} must be lower snake case (letters, digits, underscores; "
            "starting with a letter), at most 40 characters: it becomes the type in limsync.toml"
        )
    camel = "".join(part.capitalize() for part in name.split("_"))
    return {
        "name": name,
        "package": f"limsync_{name}",
        "dist": f"limsync-{name.replace('_', '-')}",
        "camel": f"{camel}Connector",
        "settings": f"{camel}Settings",
    }


def layout(name: str) -> dict[str, str]:
    """Relative path of each generated file -> its template."""
    package = _names(name)["package"]
    return {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"src/{package}/__init__.py": "__init__.py.tmpl",
        f"src/{package}/connector.py": "connector.py.tmpl",
        f"src/{package}/fake.py": "fake.py.tmpl",
        "tests/test_contract.py": "test_contract.py.tmpl",
    }


def generate(name: str, directory: Path) -> list[Path]:
    """Write the package for connector type ``name`` into ``directory`` (which must not exist).

    Returns the files written. ConfigError for an invalid name or an existing directory:
    nothing is ever overwritten.
    """
    values = _names(name)
    if directory.exists():
        raise ConfigError(f"{directory} already exists; choose another --path (nothing written)")
    templates = resources.files("limsync.scaffold") / "templates"
    rendered = {
        relative: Template((templates / template).read_text(encoding="utf-8")).substitute(values)
        for relative, template in layout(name).items()
    }  # all rendered before anything is written: a template error leaves no half package
    written = []
    for relative, text in rendered.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
