"""Tests for limsync.pipeline.upsert_sql: dialect details of the upsert's SQL."""

from __future__ import annotations

from sqlalchemy.dialects.mysql import pymysql

from limsync.pipeline.upsert_sql import values_row


def test_a_values_row_opens_as_each_mysql_family_server_reads_it() -> None:
    mysql8 = pymysql.dialect()
    mariadb = pymysql.dialect(is_mariadb=True)
    assert (values_row(mariadb), values_row(mysql8)) == ("(", "ROW(")
