"""The declarative REST connector (``type = "rest"``): a JSON API from configuration alone.

See ``docs/rest.md``; :mod:`.settings` holds the settings models, :mod:`.connector` the reader.
"""

from limsync.connectors.rest.connector import RestConnector, build_paginator
from limsync.connectors.rest.settings import RestSettings, RestStreamSettings

__all__ = ["RestConnector", "RestSettings", "RestStreamSettings", "build_paginator"]
