"""Shared fixtures: one isolated pipeline database per test, on every configured backend.

SQLite always runs. MariaDB/MySQL and PostgreSQL run when ``LIMSYNC_TEST_MYSQL_URL`` /
``LIMSYNC_TEST_POSTGRES_URL`` are set; in CI (``CI`` set) a missing URL or an unreachable server
is a failure, never a skip. Each test gets its own ``schema_prefix`` so tests never see each
other's tables, and the schemas are dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from limsync.pipeline import Database

BACKENDS = ("sqlite", "mysql", "postgres")
ENV = {"mysql": "LIMSYNC_TEST_MYSQL_URL", "postgres": "LIMSYNC_TEST_POSTGRES_URL"}
IN_CI = bool(os.environ.get("CI"))


def backend_url(backend: str, tmp_path: Path) -> str:
    """The URL for a backend, skipping (or failing, in CI) when it is not configured."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'pipeline.db'}"
    url = os.environ.get(ENV[backend])
    if not url:
        if IN_CI:
            pytest.fail(f"{ENV[backend]} is not set: CI must run the {backend} tests")
        pytest.skip(f"{ENV[backend]} not set")
    return url


def _drop_prefixed(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name in ("mysql", "mariadb"):
                names = [
                    r[0]
                    for r in conn.exec_driver_sql(
                        "SELECT schema_name FROM information_schema.schemata "
                        "WHERE schema_name LIKE %s",
                        (prefix.replace("_", "\\_") + "%",),
                    )
                ]
                # Schemas reference each other: drop them without FK checks, in any order.
                conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
                for n in names:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{n}`")
                conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")
            else:
                names = [
                    r[0]
                    for r in conn.exec_driver_sql(
                        "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                        (prefix.replace("_", "\\_") + "%",),
                    )
                ]
                for n in names:
                    conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{n}" CASCADE')
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each database backend in turn."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> str:
    """A database URL for the current backend."""
    return backend_url(backend, tmp_path)


@pytest.fixture
def schema_prefix() -> str:
    """A prefix unique to this test, so schemas never collide across tests or runs."""
    return f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def db(db_url: str, schema_prefix: str, backend: str) -> Iterator[Database]:
    """An empty pipeline database on the current backend."""
    database = Database(db_url, schema_prefix=schema_prefix, state_schema="limsync")
    try:
        with database.engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"{backend} server unreachable in CI: {exc.orig}")
        pytest.skip(f"{backend} server unreachable: {exc.orig}")
    yield database
    database.dispose()
    if backend != "sqlite":
        _drop_prefixed(db_url, schema_prefix)
