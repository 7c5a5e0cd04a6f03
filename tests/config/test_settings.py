"""Settings: the TOML file, ``LIMSYNC_*`` overrides, and errors that never show secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from limsync.config.example import EXAMPLE
from limsync.config.settings import Settings, load_settings
from limsync.errors import ConfigError

SECRET = "hunter2-very-secret"

BASE = """\
database_url = "sqlite:///from-file.db"
schema_prefix = "lab_"

[connectors.alyx]
type = "alyx"
base_url = "http://127.0.0.1:8000/api/"
username = "sync-bot"
password = "file-password"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LIMSYNC_* variable from the outside world leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("LIMSYNC_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limsync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def password_of(settings: Settings, name: str = "alyx") -> str:
    secret = settings.connector_settings(name).password  # type: ignore[attr-defined]
    return str(secret.get_secret_value())


def test_file_values_are_read(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE))
    assert settings.database_url == "sqlite:///from-file.db"
    assert settings.schema_prefix == "lab_"
    assert password_of(settings) == "file-password"
    assert settings.connector_settings("alyx").type == "alyx"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMSYNC_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("LIMSYNC_CONNECTORS__ALYX__PASSWORD", "env-password")

    settings = load_settings(write(tmp_path, BASE))

    assert settings.database_url == "sqlite:///from-env.db"
    assert password_of(settings) == "env-password"
    # The rest of the connector's section still comes from the file.
    alyx = settings.connector_settings("alyx")
    assert alyx.username == "sync-bot"  # type: ignore[attr-defined]
    assert settings.schema_prefix == "lab_"


def test_password_from_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE.replace('password = "file-password"\n', "")
    monkeypatch.setenv("LIMSYNC_CONNECTORS__ALYX__PASSWORD", "env-only")
    assert password_of(load_settings(write(tmp_path, text))) == "env-only"


def test_example_is_valid_with_the_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMSYNC_CONNECTORS__ALYX__PASSWORD", SECRET)
    settings = load_settings(write(tmp_path, EXAMPLE))
    assert password_of(settings) == SECRET
    assert settings.connector_settings("alyx").streams["weighings"].delete_policy == "flag"


def test_no_file_means_defaults_plus_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./limsync.toml here
    monkeypatch.setenv("LIMSYNC_BATCH_SIZE", "77")
    settings = load_settings()
    assert settings.batch_size == 77
    assert settings.database_url == "sqlite:///limsync.db"
    assert settings.connectors == {}


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("change", "place"),
    [
        pytest.param(("", "page_size = 5000\n"), "page_size", id="connector-value"),
        pytest.param(("", 'bogus = "x"\n'), "bogus", id="connector-unknown-key"),
        pytest.param(
            ('base_url = "http://127.0.0.1:8000/api/"', 'base_url = "http://u:p@127.0.0.1/"'),
            "base_url",
            id="credentials-in-url",
        ),
        pytest.param(("", "[connectors.alyx.streams.nope]\nenabled = true\n"), "nope", id="stream"),
    ],
)
def test_errors_name_the_place_and_never_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: tuple[str, str], place: str
) -> None:
    old, new = change
    text = BASE.replace('password = "file-password"\n', f'password = "{SECRET}"\n')
    text = text.replace(old, new) if old else text + new
    monkeypatch.setenv("LIMSYNC_CONNECTORS__ALYX__PASSWORD", SECRET)

    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))

    message = str(info.value)
    assert place in message
    assert SECRET not in message
    assert info.value.exit_code == 2


def test_a_bad_top_level_value_names_the_file_and_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "batch_size = 0\n" + BASE)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message
    assert "batch_size" in message and "LIMSYNC_BATCH_SIZE" in message


def test_a_bad_connector_value_names_the_file_table_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, BASE + "page_size = 5000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith("connector 'alyx' settings: page_size: "), message
    assert f"{path} [connectors.alyx]" in message
    assert "LIMSYNC_CONNECTORS__ALYX__PAGE_SIZE" in message

    # The same hint when the bad value comes from the environment, never echoing it.
    monkeypatch.setenv("LIMSYNC_CONNECTORS__ALYX__PAGE_SIZE", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, BASE))
    assert "LIMSYNC_CONNECTORS__ALYX__PAGE_SIZE" in str(info.value)
    assert SECRET not in str(info.value)


def test_a_connector_wide_problem_names_the_table(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('password = "file-password"\n', ""))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"(in {path} [connectors.alyx])" in str(info.value)


def test_a_bad_environment_value_never_echoes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMSYNC_BATCH_SIZE", f"{SECRET}")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, BASE))
    assert "batch_size" in str(info.value)
    assert SECRET not in str(info.value)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + f'\n[broken\nx = "{SECRET}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)
    assert SECRET not in str(info.value)


def test_unknown_connector_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, BASE.replace('type = "alyx"', 'type = "nosuchlims"')))
    assert "nosuchlims" in str(info.value)


def test_schedule_entries_need_exactly_one_trigger(tmp_path: Path) -> None:
    text = BASE + '\n[[schedule]]\nselect = "alyx"\ninterval = "15m"\ncron = "0 2 * * *"\n'
    with pytest.raises(ConfigError, match="schedule"):
        load_settings(write(tmp_path, text))


def test_a_malformed_json_environment_value_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMSYNC_CONNECTORS", '{"alyx": {"password": "' + SECRET + '"')
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, BASE))
    assert "LIMSYNC_CONNECTORS" in str(info.value) or "connectors" in str(info.value)
    assert SECRET not in str(info.value)
