"""docs/daemon.md: the lab's example limsync.toml is a valid daemon configuration, and the
systemd unit runs the command that exists, with the stop settings the daemon needs."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from limsync.cli.main import cli
from limsync.config.duration import parse_duration
from limsync.config.settings import Settings
from limsync.sync.schedule import job_specs

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "daemon.md"


def block(after: str, language: str) -> str:
    """The ``language`` code block that follows the line ``after``."""
    found = re.search(rf"{re.escape(after)}\n\n```{language}\n(.*?)^```", GUIDE.read_text(),
                      re.S | re.M)  # fmt: skip
    assert found, f"no {language} block after {after!r} in {GUIDE.name}"
    return found.group(1)


def test_the_example_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    # The secrets come from the environment file, as the guide says.
    for name, value in (("ALYX__PASSWORD", "pw"), ("PYRAT__CLIENT_TOKEN", "c"),
                        ("PYRAT__USER_TOKEN", "u")):  # fmt: skip
        monkeypatch.setenv(f"LIMSYNC_CONNECTORS__{name}", value)
    monkeypatch.setenv("LIMSYNC_ALERTS__WEBHOOK_URL", "https://hooks.example.org/x")
    data = tomllib.loads(block("`/etc/limsync/limsync.toml`:", "toml"))
    settings = Settings(**data)
    assert settings.database_url.startswith("mysql+pymysql://")
    labels = [j.label for j in job_specs(settings)]
    assert labels == [
        "alyx (full, cron 0 2 * * *)",
        "pyrat (full, cron 30 2 * * *)",
        "alyx (incremental, every 15m)",
        "pyrat (incremental, every 15m)",
    ]
    for name in settings.connectors:
        settings.connector_settings(name)  # each validates, secrets included
    assert settings.daemon.health_max_age is not None


def test_the_systemd_unit_runs_the_daemon_and_waits_for_a_graceful_stop() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(block("`/etc/systemd/system/limsync.service`:", "ini"))
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/limsync")
    result = CliRunner().invoke(cli, [*argv[1:], "--help"])
    assert result.exit_code == 0, result.output  # the options exist, in this order
    assert service["KillSignal"] == "SIGTERM"
    # systemd must wait longer than the daemon's own stop_timeout before it sends SIGKILL.
    stop_timeout = tomllib.loads(block("`/etc/limsync/limsync.toml`:", "toml"))["daemon"][
        "stop_timeout"
    ]
    assert int(service["TimeoutStopSec"]) > parse_duration(stop_timeout)
    assert service["RestartPreventExitStatus"] == "2"  # configuration errors exit 2
