"""limsync: keep a lab's relational data pipeline in step with its LIMS."""

from limsync.errors import LimsyncError

__version__ = "0.1.0"

__all__ = ["LimsyncError", "__version__"]
