"""Tests for limsync.connectors.registry (entry-point discovery)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from limsync.connectors import registry
from limsync.connectors.alyx import AlyxConnector
from limsync.errors import ConfigError

PLUGIN = """
from typing import Literal

from pydantic import BaseModel

from limsync.connectors.base import Connector, ConnectorSettings, Stream, Streams


class Thing(BaseModel):
    id: int


class PluginSettings(ConnectorSettings):
    type: Literal["{type_name}"] = "{type_name}"


class PluginConnector(Connector):
    type_name = "{type_name}"
    settings_model = PluginSettings
    streams = Streams(Stream("things", "things", Thing, key=("id",)))


NOT_A_CONNECTOR = 42
"""


def distribution(
    tmp_path: Path, dist: str, entries: dict[str, str]
) -> list[importlib.metadata.EntryPoint]:
    """Entry points of a fake installed distribution (a real .dist-info directory)."""
    info = tmp_path / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\n{lines}\n")
    eps = importlib.metadata.PathDistribution(info).entry_points
    return [ep for ep in eps if ep.group == registry.GROUP]


def plugin_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, type_name: str
) -> None:
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(PLUGIN.replace("{type_name}", type_name))
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def use(monkeypatch: pytest.MonkeyPatch, eps: list[importlib.metadata.EntryPoint]) -> None:
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)


def test_the_built_in_alyx_connector_is_found_through_its_entry_point() -> None:
    eps = [ep for ep in importlib.metadata.entry_points(group=registry.GROUP) if ep.name == "alyx"]
    assert eps, "limsync is not installed: pip install -e . --no-deps"
    assert eps[0].value == "limsync.connectors.alyx:AlyxConnector"
    assert registry.available()["alyx"] is AlyxConnector
    assert registry.get("alyx") is AlyxConnector
    assert "alyx" not in registry.broken()


def test_unknown_type_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin_module(tmp_path, monkeypatch, "limsync_plugin_known", "mylims")
    use(
        monkeypatch,
        distribution(tmp_path, "limsync", {"alyx": "limsync.connectors.alyx:AlyxConnector"})
        + distribution(
            tmp_path, "mylims-plugin", {"mylims": "limsync_plugin_known:PluginConnector"}
        ),
    )
    assert sorted(registry.available()) == ["alyx", "mylims"]
    with pytest.raises(ConfigError, match="unknown connector type 'pyrat'; known: alyx, mylims"):
        registry.get("pyrat")


def test_broken_plugins_are_reported_with_their_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin_module(tmp_path, monkeypatch, "limsync_plugin_broken", "wrongname")
    use(
        monkeypatch,
        distribution(tmp_path, "limsync", {"alyx": "limsync.connectors.alyx:AlyxConnector"})
        + distribution(tmp_path, "missing-plugin", {"gone": "no_such_module_xyz:Connector"})
        + distribution(tmp_path, "odd-plugin", {"odd": "limsync_plugin_broken:NOT_A_CONNECTOR"})
        + distribution(
            tmp_path, "renamed-plugin", {"named": "limsync_plugin_broken:PluginConnector"}
        ),
    )
    assert list(registry.available()) == ["alyx"]  # the others do not break it
    broken = registry.broken()
    assert sorted(broken) == ["gone", "named", "odd"]
    assert broken["gone"].startswith("missing-plugin") and "ModuleNotFoundError" in broken["gone"]
    assert broken["odd"].startswith("odd-plugin") and "not a Connector" in broken["odd"]
    assert "renamed-plugin" in broken["named"] and "'wrongname'" in broken["named"]
    with pytest.raises(ConfigError, match="installed but broken: missing-plugin"):
        registry.get("gone")


def test_two_distributions_with_the_same_name_are_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin_module(tmp_path, monkeypatch, "limsync_plugin_dup", "alyx")
    use(
        monkeypatch,
        distribution(tmp_path, "limsync", {"alyx": "limsync.connectors.alyx:AlyxConnector"})
        + distribution(tmp_path, "alyx-fork", {"alyx": "limsync_plugin_dup:PluginConnector"}),
    )
    for call in (registry.available, lambda: registry.get("alyx")):
        with pytest.raises(ConfigError) as info:
            call()
        assert "limsync" in str(info.value) and "alyx-fork" in str(info.value)


def test_the_same_distribution_seen_twice_is_not_a_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "site-a").mkdir()
    (tmp_path / "site-b").mkdir()
    value = {"alyx": "limsync.connectors.alyx:AlyxConnector"}
    use(
        monkeypatch,
        distribution(tmp_path / "site-a", "limsync", value)
        + distribution(tmp_path / "site-b", "limsync", value),
    )
    assert registry.get("alyx") is AlyxConnector


def _install(site: Path, dist: str, module: str, entries: dict[str, str], source: str) -> None:
    """A real installed distribution in ``site``: a module and a .dist-info with entry points."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\n{lines}\n")
    (info / "RECORD").write_text("")


def _limsync_connectors(site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "limsync", "connectors"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_an_installed_plugin_is_listed_by_the_cli(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install(
        site,
        "limsync-mylims",
        "limsync_mylims_real",
        {"mylims": "limsync_mylims_real:PluginConnector"},
        PLUGIN.replace("{type_name}", "mylims"),
    )
    _install(site, "limsync-broken", "limsync_broken_real", {"broken": "limsync_broken_real:X"},
             "raise RuntimeError('plugin import exploded')\n")  # fmt: skip
    run = _limsync_connectors(site)
    assert run.returncode == 0, run.stderr
    assert "mylims" in run.stdout and "limsync_mylims_real.PluginConnector" in run.stdout
    assert "alyx" in run.stdout  # the broken plugin hides nothing
    assert "broken plugin broken: limsync-broken" in run.stderr
    assert "plugin import exploded" in run.stderr

    _install(
        site,
        "limsync-mylims-fork",
        "limsync_mylims_fork",
        {"mylims": "limsync_mylims_fork:PluginConnector"},
        PLUGIN.replace("{type_name}", "mylims"),
    )
    run = _limsync_connectors(site)
    assert run.returncode == 2
    assert "'mylims' is registered by more than one distribution" in run.stderr
    assert "limsync-mylims (" in run.stderr and "limsync-mylims-fork (" in run.stderr
    assert "alyx" in run.stdout
