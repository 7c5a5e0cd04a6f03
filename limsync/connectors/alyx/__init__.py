"""The built-in Alyx connector (registered as entry point ``alyx`` in ``limsync.connectors``)."""

from limsync.connectors.alyx.connector import AlyxConnector, AlyxSettings

__all__ = ["AlyxConnector", "AlyxSettings"]
