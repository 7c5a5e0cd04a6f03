"""Configuration: ``limsync.toml`` plus ``LIMSYNC_*`` environment variables."""

from limsync.config.settings import ScheduleEntry, Settings, load_settings

__all__ = ["ScheduleEntry", "Settings", "load_settings"]
