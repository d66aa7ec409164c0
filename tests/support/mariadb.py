"""Throwaway databases on the MariaDB server of this machine (root, no password)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pymysql

HOST, PORT, USER = "127.0.0.1", 3306, "root"


@contextlib.contextmanager
def databases(count: int) -> Iterator[list[str]]:
    """``count`` fresh databases; yields their mysql:// URLs and drops them afterwards."""
    names = [f"tidedesk_t_{uuid.uuid4().hex[:10]}_{i}" for i in range(count)]
    try:
        conn = pymysql.connect(host=HOST, port=PORT, user=USER, password="", autocommit=True)
        try:
            with conn.cursor() as cur:
                for name in names:
                    cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        yield [f"mysql://{USER}@{HOST}:{PORT}/{name}" for name in names]
    finally:
        # A new connection: the server may have been restarted meanwhile (chaos tests).
        conn = pymysql.connect(host=HOST, port=PORT, user=USER, password="", autocommit=True)
        try:
            with conn.cursor() as cur:
                for name in names:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()
