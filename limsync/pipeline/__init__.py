"""The target side: pipeline tables, DDL, upserts, the foreign-key graph and limsync's ledger.

This package knows the database and never HTTP: it imports neither ``requests`` nor
``limsync.connectors``.
"""

from limsync.pipeline.columns import ColumnType, Key, SqlType
from limsync.pipeline.database import Database
from limsync.pipeline.insert import insert_new
from limsync.pipeline.tables import (
    ColumnSpec,
    Computed,
    ForeignKeySpec,
    Imported,
    Lookup,
    Manual,
    Part,
    Ref,
    Schema,
    Table,
    TableSpec,
    Tier,
)
from limsync.pipeline.upsert import ChangeSet, upsert

__all__ = [
    "ChangeSet",
    "ColumnSpec",
    "ColumnType",
    "Computed",
    "Database",
    "ForeignKeySpec",
    "Imported",
    "Key",
    "Lookup",
    "Manual",
    "Part",
    "Ref",
    "Schema",
    "SqlType",
    "Table",
    "TableSpec",
    "Tier",
    "insert_new",
    "upsert",
]
