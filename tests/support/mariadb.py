"""Throwaway databases on the MariaDB server of this machine (root, no password)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pymysql

HOST, PORT, USER = "127.0.0.1", 3306, "root"


def _execute_each(statement: str, names: list[str]) -> None:
    """Run ``statement`` (with ``{name}``) once per name, on a connection of its own: the server
    may have been restarted since the last one (chaos tests)."""
    conn = pymysql.connect(host=HOST, port=PORT, user=USER, password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(statement.format(name=name))
    finally:
        conn.close()


@contextlib.contextmanager
def databases(count: int) -> Iterator[list[str]]:
    """``count`` fresh databases; yields their mysql:// URLs and drops them afterwards."""
    names = [f"tidedesk_t_{uuid.uuid4().hex[:10]}_{i}" for i in range(count)]
    try:
        _execute_each("CREATE DATABASE `{name}` CHARACTER SET utf8mb4", names)
        yield [f"mysql://{USER}@{HOST}:{PORT}/{name}" for name in names]
    finally:
        _execute_each("DROP DATABASE IF EXISTS `{name}`", names)
