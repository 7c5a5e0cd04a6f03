"""The built-in PyRAT connector (registered as entry point ``pyrat`` in ``limsync.connectors``)."""

from limsync.connectors.pyrat.connector import PyratConnector, PyratSettings

__all__ = ["PyratConnector", "PyratSettings"]
