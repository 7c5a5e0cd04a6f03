"""Settings: ``limsync.toml`` plus ``LIMSYNC_*`` environment variables (pydantic-settings).

Every value in the file can be overridden from the environment, nested with ``__``:
``LIMSYNC_DATABASE_URL``, ``LIMSYNC_CONNECTORS__ALYX__PASSWORD``. Environment variables win over
the file. Connector sections are validated by the connector type's own settings model, so a
typo or a missing password is reported with its place (``connectors.alyx.password``) before
anything runs. Error messages never contain the values that were given, only where they were.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from limsync.connectors.base import ConnectorSettings
from limsync.errors import ConfigError

DEFAULT_PATH = Path("limsync.toml")


class ScheduleEntry(BaseModel):
    """One ``[[schedule]]`` entry of the daemon."""

    model_config = ConfigDict(extra="forbid")

    select: str = Field(description='"alyx", "alyx.sessions" or "populate"')
    interval: str | None = Field(None, description='"15m", "1h", "30s"')
    cron: str | None = Field(None, description='"0 2 * * *" (UTC)')
    mode: Literal["full", "incremental"] = "full"
    jitter: int | None = Field(None, ge=0, description="seconds of random delay")

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleEntry:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of interval or cron")
        return self


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="LIMSYNC_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    database_url: str = "sqlite:///limsync.db"
    schema_prefix: str = ""
    state_schema: str = "limsync"
    batch_size: int = Field(1000, ge=1, le=50_000)
    connectors: dict[str, dict[str, Any]] = {}
    schedule: list[ScheduleEntry] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init arguments; the environment must win over them.
        return (env_settings, init_settings)

    def connector_settings(self, name: str) -> ConnectorSettings:
        """The validated settings of one connector instance."""
        from limsync.connectors import registry

        if name not in self.connectors:
            known = ", ".join(sorted(self.connectors)) or "none configured"
            raise ConfigError(f"no connector named {name!r} in the configuration ({known})")
        data = self.connectors[name]
        type_name = data.get("type")
        if not type_name:
            raise ConfigError(f"connectors.{name}: 'type' is required (e.g. type = \"alyx\")")
        cls = registry.get(str(type_name))
        return cls.parse_settings(data, name=name)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the configuration file (if any) and the environment; ConfigError says what and where.

    ``path`` None means ``./limsync.toml`` when it exists, else defaults plus environment.
    """
    file = Path(path) if path is not None else DEFAULT_PATH
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{file}: cannot be read: {exc.strerror}") from None
    elif path is not None:
        raise ConfigError(f"configuration file {file} does not exist (create one: limsync init)")
    try:
        settings = Settings(**data)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(file))) from None
    except SettingsError as exc:
        # e.g. a LIMSYNC_* variable holding malformed JSON; the message names the field only.
        raise ConfigError(f"invalid LIMSYNC_* environment variable: {exc}") from None
    for name in settings.connectors:
        settings.connector_settings(name)  # validate every instance up front
    return settings


def describe_validation_error(exc: pydantic.ValidationError, where: str) -> str:
    """A readable list of problems, with places but never the offending values."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        env = "LIMSYNC_" + "__".join(str(p).upper() for p in err["loc"])
        lines.append(f"  - {loc}: {err['msg']} (set it in {where} or {env})")
    return f"invalid configuration in {where}:\n" + "\n".join(lines)
