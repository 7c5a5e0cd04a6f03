"""Finding connector classes through the entry-point group ``limsync.connectors``.

A distribution registers a connector with, in its ``pyproject.toml``::

    [project.entry-points."limsync.connectors"]
    mylims = "mylims_limsync:MyLimsConnector"

The entry-point name is the connector's ``type_name`` (the ``type`` in ``limsync.toml``). The
built-in Alyx connector is registered the same way by limsync's own ``pyproject.toml``.

A plugin that fails to import or is not a Connector does not hide the others: it is listed by
:func:`broken` with its distribution's name. Two distributions claiming the same name are a
configuration error, since either could be meant.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass

from limsync.connectors.base import Connector
from limsync.errors import ConfigError

GROUP = "limsync.connectors"


def _entry_points() -> Sequence[importlib.metadata.EntryPoint]:
    """The installed entry points of the group (tests replace this function)."""
    return list(importlib.metadata.entry_points(group=GROUP))


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return str(name) if name else "an unknown distribution"


@dataclass(frozen=True)
class _Scan:
    classes: dict[str, type[Connector]]
    broken: dict[str, str]
    duplicates: dict[str, list[str]]


def _scan() -> _Scan:
    by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in _entry_points():
        same = by_name.setdefault(ep.name, [])
        # The same distribution seen twice on sys.path is one plugin, not a conflict.
        if not any(o.value == ep.value and _distribution(o) == _distribution(ep) for o in same):
            same.append(ep)
    classes: dict[str, type[Connector]] = {}
    broken: dict[str, str] = {}
    duplicates: dict[str, list[str]] = {}
    for name, eps in by_name.items():
        if len(eps) > 1:
            duplicates[name] = [f"{_distribution(ep)} ({ep.value})" for ep in eps]
            continue
        ep = eps[0]
        where = f"{_distribution(ep)} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as exc:  # any import-time failure of a plugin is reported, not raised
            broken[name] = f"{where}: cannot be loaded: {type(exc).__name__}: {exc}"
            continue
        if not (isinstance(obj, type) and issubclass(obj, Connector)):
            broken[name] = f"{where}: is not a Connector subclass"
        elif obj.type_name != name:
            broken[name] = f"{where}: registered as {name!r} but its type_name is {obj.type_name!r}"
        else:
            classes[name] = obj
    return _Scan(classes, broken, duplicates)


def _duplicate_error(name: str, sources: list[str]) -> ConfigError:
    return ConfigError(
        f"connector type {name!r} is registered by more than one distribution: "
        f"{' and '.join(sources)}; uninstall one of them"
    )


def available() -> dict[str, type[Connector]]:
    """Every loadable connector class by type name (broken plugins left out, see broken())."""
    scan = _scan()
    for name, sources in scan.duplicates.items():
        raise _duplicate_error(name, sources)
    return dict(sorted(scan.classes.items()))


def usable() -> dict[str, type[Connector]]:
    """Every loadable connector class whose name only one distribution claims (never raises)."""
    return dict(sorted(_scan().classes.items()))


def duplicates() -> dict[str, list[str]]:
    """Type names claimed by more than one distribution: name -> each claimant and its target."""
    return dict(sorted(_scan().duplicates.items()))


def duplicate_error(name: str, sources: list[str]) -> ConfigError:
    """The error for a type name that several distributions register."""
    return _duplicate_error(name, sources)


def broken() -> dict[str, str]:
    """Plugins that could not be used: type name -> distribution and reason."""
    return dict(sorted(_scan().broken.items()))


def get(type_name: str) -> type[Connector]:
    """The connector class registered as ``type_name``.

    ConfigError when the name is unknown (listing the known ones), when its plugin is broken,
    or when two distributions register it.
    """
    scan = _scan()
    if type_name in scan.duplicates:
        raise _duplicate_error(type_name, scan.duplicates[type_name])
    if type_name in scan.classes:
        return scan.classes[type_name]
    if type_name in scan.broken:
        raise ConfigError(
            f"connector type {type_name!r} is installed but broken: {scan.broken[type_name]}"
        )
    known = ", ".join(sorted(scan.classes)) or "none"
    raise ConfigError(f"unknown connector type {type_name!r}; known: {known}")
