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
from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from limsync.config.duration import parse_duration
from limsync.config.mappings import Mappings
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

    @field_validator("interval")
    @classmethod
    def _interval_readable(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron_readable(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value, timezone="UTC")
            except ValueError as exc:
                raise ValueError(
                    f"not a cron expression (minute hour day month weekday): {exc}"
                ) from None
        return value


Seconds = Annotated[float, BeforeValidator(parse_duration)]


class DaemonSettings(BaseModel):
    """The ``[daemon]`` section: metrics, health, misfires, stopping and backoff."""

    model_config = ConfigDict(extra="forbid")

    metrics_address: str | None = Field(
        "127.0.0.1:9464", description='"host:port" of /metrics and /healthz; "" turns them off'
    )
    health_max_age: Seconds | None = Field(
        None, description="unhealthy when a connector has not succeeded for this long"
    )
    health_max_age_by_connector: dict[str, Seconds] = {}
    misfire_grace: Seconds = 300.0
    stop_timeout: Seconds = 120.0
    backoff_base: Seconds = 60.0
    backoff_cap: Seconds = 3600.0


class AlertSettings(BaseModel):
    """The ``[alerts]`` section: a webhook that receives a small JSON document per event."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: SecretStr | None = None
    timeout: Seconds = 10.0
    on_failure: bool = True
    on_recovery: bool = True
    on_quarantine: bool = True


class DataJointSettings(BaseModel):
    """``[populate.datajoint]``: the lab's own DataJoint tables to refresh after a sync."""

    model_config = ConfigDict(extra="forbid")

    tables: list[str] = Field(default_factory=list, description='"mylab.ephys.SpikeSorting"')
    action: Literal["populate", "jobs"] = "populate"
    on_change: Literal["recompute", "keep"] = "recompute"


class PopulateSettings(BaseModel):
    """``[populate]``: limsync Computed/Imported tables and how they are populated."""

    model_config = ConfigDict(extra="forbid")

    tables: list[str] = Field(default_factory=list, description='"mylab.pipeline.WeightSummary"')
    workers: int = Field(1, ge=1, le=256)
    reservation_timeout: Seconds = Field(600.0, gt=0, description='seconds (or "10m")')
    after_sync: bool = True
    datajoint: DataJointSettings = Field(default_factory=DataJointSettings)


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
    populate: PopulateSettings = Field(default_factory=PopulateSettings)
    daemon: DaemonSettings = DaemonSettings()
    alerts: AlertSettings = AlertSettings()
    pipelines: list[str] = []
    """Pipelines to declare before mapping: a built-in mapping name or a module with SCHEMAS."""
    mappings: Mappings = {}
    """Declarative mappings: connector instance -> stream -> tables (docs/migrations.md)."""

    _source: str = PrivateAttr("limsync.toml")
    """The file the settings came from: named in connector settings errors."""

    @model_validator(mode="after")
    def _mapped_connectors(self) -> Settings:
        unknown = sorted(set(self.mappings) - set(self.connectors))
        if unknown:
            raise ValueError(
                f"mappings for unknown connector(s) {', '.join(unknown)}; "
                f"configured: {', '.join(sorted(self.connectors)) or 'none'}"
            )
        return self

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
        return cls.parse_settings(data, name=name, where=self._source)


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
    settings._source = str(file)
    for name in settings.connectors:
        settings.connector_settings(name)  # validate every instance up front
    return settings


def describe_validation_error(exc: pydantic.ValidationError, where: str) -> str:
    """A readable list of problems, with places but never the offending values."""
    lines = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])[1:]
        env = "LIMSYNC_" + "__".join(str(p).upper() for p in err["loc"])
        lines.append(f"  - {loc}: {err['msg']} (set it in {where} or {env})")
    return f"invalid configuration in {where}:\n" + "\n".join(lines)
