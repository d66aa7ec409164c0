"""``tidedesk backup`` / ``tidedesk restore`` (issue 19): every shard, the keys, the policies.

A backup is one gzip'd tar:

- ``manifest.json``: format, time, schema version, shard count, tables and row counts;
- ``shard-<i>/<table>.jsonl``: every row of every table of every shard, one JSON object a line
  (bytes as ``{"$b64": ...}``, times as ``{"$dt": ...}``), read inside one snapshot per shard
  (``START TRANSACTION WITH CONSISTENT SNAPSHOT``; SQLite: one read transaction). The snapshots
  of all shards are opened first, then read, so they are a few milliseconds apart at most;
- ``keys.json``: the AES key (and previous keys) and the JWT secret, sealed with AES-256-GCM
  under a key derived from the passphrase with scrypt (n=2**15, r=8, p=1). Without them the
  visitors' encrypted fields cannot be read: the rows are copied as stored, ciphertext and all;
- ``files/<name>``: files added with ``--include`` (the control plane's policies, routing).

Restore creates the schema (``migrate``), refuses tables that already hold rows unless told to
replace them, inserts every row as it was, and writes the keys and files where asked.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import peewee as pw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tidedesk.models import SCHEMA_VERSION, Shard
from tidedesk.storage import Storage

FORMAT = "tidedesk-backup/1"
MIN_PASSPHRASE_CHARS = 12
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
INSERT_BATCH = 500


class BackupError(ValueError):
    """The backup cannot be made or restored; the message says what to change."""


# --- the keys, sealed with the passphrase ---------------------------------------------------
def _derive(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(
        passphrase.encode())


def check_passphrase(passphrase: str) -> str:
    passphrase = passphrase.rstrip("\r\n")
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise BackupError(f"the passphrase needs at least {MIN_PASSPHRASE_CHARS} characters")
    return passphrase


def seal_keys(keys: dict[str, Any], passphrase: str) -> dict[str, str]:
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(_derive(passphrase, salt)).encrypt(
        nonce, json.dumps(keys).encode(), FORMAT.encode())
    b64 = base64.b64encode
    return {"kdf": f"scrypt:n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}", "cipher": "AES-256-GCM",
            "salt": b64(salt).decode(), "nonce": b64(nonce).decode(),
            "sealed": b64(sealed).decode()}


def open_keys(doc: dict[str, str], passphrase: str) -> dict[str, Any]:
    try:
        salt, nonce, sealed = (base64.b64decode(doc[k]) for k in ("salt", "nonce", "sealed"))
        plain = AESGCM(_derive(passphrase, salt)).decrypt(nonce, sealed, FORMAT.encode())
    except InvalidTag:
        raise BackupError("wrong passphrase (or a damaged backup): the keys do not open") from None
    except (KeyError, ValueError) as exc:
        raise BackupError(f"keys.json is damaged: {exc}") from None
    return dict(json.loads(plain))


# --- rows as JSON ---------------------------------------------------------------------------
def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.datetime | datetime.date):
        return {"$dt": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$dec": str(value)}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$b64" in value:
            return base64.b64decode(value["$b64"])
        if "$dt" in value:
            text = value["$dt"]
            return (datetime.datetime.fromisoformat(text) if "T" in text or " " in text
                    else datetime.date.fromisoformat(text))
        if "$dec" in value:
            return decimal.Decimal(value["$dec"])
    return value


def _sql(db: Any, sql: str) -> Any:
    """peewee's execute_sql (untyped) on one shard's database."""
    return db.execute_sql(sql)


def _quote(db: pw.Database, name: str) -> str:
    return f"`{name}`" if isinstance(db, pw.MySQLDatabase) else f'"{name}"'


def _begin_snapshot(db: pw.Database) -> None:
    db.connect(reuse_if_open=True)
    if isinstance(db, pw.MySQLDatabase):
        _sql(db, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        _sql(db, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
    else:
        _sql(db, "BEGIN")
        _sql(db, "SELECT count(*) FROM sqlite_master")  # the read snapshot starts here


def _dump_table(db: pw.Database, table: str, out: IO[str]) -> int:
    cursor = _sql(db, f"SELECT * FROM {_quote(db, table)}")
    columns = [d[0] for d in cursor.description]
    n = 0
    for row in cursor:
        out.write(json.dumps({c: _encode(v) for c, v in zip(columns, row, strict=True)},
                             ensure_ascii=False) + "\n")
        n += 1
    return n


@dataclass
class Summary:
    shards: int
    tables: dict[str, int] = field(default_factory=dict)  # "shard-0/message" -> rows
    files: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
    tar.addfile(info, io.BytesIO(data))


def write_backup(storage: Storage, keys: dict[str, Any], passphrase: str, out: IO[bytes],
                 include: Iterable[Path] = ()) -> Summary:
    """Write the backup of ``storage`` (every shard), the sealed ``keys`` and ``include`` to
    ``out``. Blocking: call it from a thread, not from an event loop."""
    passphrase = check_passphrase(passphrase)
    files = [Path(p) for p in include]
    for path in files:
        if not path.is_file():
            raise BackupError(f"--include: {path} is not a readable file")
    shards = storage.database.shards
    summary = Summary(shards=len(shards))
    with tempfile.TemporaryDirectory(prefix="tidedesk-backup-") as tmp:
        staged: list[tuple[str, Path]] = []
        try:
            for shard in shards:  # open every snapshot first, then read them
                _begin_snapshot(shard.db)
            for i, shard in enumerate(shards):
                for table in sorted(shard.db.get_tables()):
                    name = f"shard-{i}/{table}.jsonl"
                    path = Path(tmp) / f"{i}-{table}.jsonl"
                    with path.open("w", encoding="utf-8") as f:
                        summary.tables[f"shard-{i}/{table}"] = _dump_table(shard.db, table, f)
                    staged.append((name, path))
        finally:
            for shard in shards:
                if not shard.db.is_closed():
                    _sql(shard.db, "COMMIT" if not isinstance(shard.db, pw.MySQLDatabase)
                                         else "ROLLBACK")
                    shard.db.close()
        manifest = {"format": FORMAT, "created_at": datetime.datetime.now(datetime.UTC)
                    .isoformat(timespec="seconds"), "schema_version": SCHEMA_VERSION,
                    "shards": len(shards), "tables": summary.tables,
                    "files": [p.name for p in files]}
        with tarfile.open(fileobj=out, mode="w|gz") as tar:
            _add(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
            _add(tar, "keys.json", json.dumps(seal_keys(keys, passphrase)).encode())
            for name, path in staged:
                tar.add(str(path), arcname=name)
            for path in files:
                _add(tar, f"files/{path.name}", path.read_bytes())
                summary.files.append(path.name)
    return summary


def _insert_rows(shard: Shard, table: str, lines: IO[bytes]) -> int:
    db = shard.db
    n, columns = 0, None
    batch: list[tuple[Any, ...]] = []
    cursor: Any = db.cursor()  # type: ignore[no-untyped-call]

    def flush() -> None:
        if batch and columns is not None:
            cols = ", ".join(_quote(db, c) for c in columns)
            marks = ", ".join([db.param] * len(columns))
            cursor.executemany(f"INSERT INTO {_quote(db, table)} ({cols}) VALUES ({marks})",
                               batch)
            batch.clear()

    for raw in lines:
        if not raw.strip():
            continue
        row = json.loads(raw)
        if columns is None:
            columns = list(row)
        batch.append(tuple(_decode(row[c]) for c in columns))
        n += 1
        if len(batch) >= INSERT_BATCH:
            flush()
    flush()
    return n


def read_backup(src: IO[bytes], passphrase: str) -> tuple[dict[str, Any], dict[str, Any],
                                                           dict[str, bytes], Path]:
    """Unpack to a temporary directory: (manifest, keys, files, directory of table dumps). The
    caller removes the directory."""
    passphrase = check_passphrase(passphrase)
    tmp = Path(tempfile.mkdtemp(prefix="tidedesk-restore-"))
    manifest: dict[str, Any] | None = None
    sealed: dict[str, str] | None = None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=src, mode="r|gz") as tar:
            for member in tar:
                f = tar.extractfile(member)
                if f is None:
                    continue
                data = f.read()
                if member.name == "manifest.json":
                    manifest = json.loads(data)
                elif member.name == "keys.json":
                    sealed = json.loads(data)
                elif member.name.startswith("files/"):
                    files[member.name[len("files/"):]] = data
                elif member.name.startswith("shard-") and member.name.endswith(".jsonl"):
                    shard, _, table = member.name.partition("/")
                    (tmp / f"{shard[len('shard-'):]}-{table}").write_bytes(data)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"not a readable backup: {exc}") from None
    if manifest is None or manifest.get("format") != FORMAT or sealed is None:
        raise BackupError(f"not a Tidedesk backup (expected {FORMAT} with manifest.json and "
                          "keys.json)")
    return manifest, open_keys(sealed, passphrase), files, tmp


def restore_backup(storage: Storage, manifest: dict[str, Any], dumps: Path,
                   replace: bool = False) -> Summary:
    """Restore the rows of an unpacked backup into ``storage``. Blocking."""
    shards = storage.database.shards
    if manifest["shards"] != len(shards):
        raise BackupError(f"the backup has {manifest['shards']} shard(s), TIDEDESK_DATABASE_URL "
                          f"names {len(shards)}: restore into as many databases as it had")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BackupError(f"the backup has schema {manifest['schema_version']}, this Tidedesk "
                          f"knows {SCHEMA_VERSION}: restore with the newer version")
    storage.migrate_all()
    summary = Summary(shards=len(shards))
    for i, shard in enumerate(shards):
        db = shard.db
        with db.connection_context():
            if isinstance(db, pw.MySQLDatabase):  # rows go in table by table, not in FK order
                _sql(db, "SET FOREIGN_KEY_CHECKS=0")
            present = set(db.get_tables())
            wanted = [k.split("/", 1)[1] for k in manifest["tables"] if k.startswith(f"shard-{i}/")]
            missing = [t for t in wanted if t not in present]
            if missing:
                raise BackupError(f"shard {i}: tables {missing} of the backup do not exist here; "
                                  "restore with the version that made it")
            with db.atomic():
                for table in wanted:
                    q = _quote(db, table)
                    count = _sql(db, f"SELECT COUNT(*) FROM {q}").fetchone()[0]
                    # migrate() writes the schema version: that table is always replaced.
                    if count and not replace and table != "schemaversion":
                        raise BackupError(f"shard {i}: table {table} already holds {count} rows; "
                                          "restore into empty databases, or pass --replace")
                    _sql(db, f"DELETE FROM {q}")
                    with (dumps / f"{i}-{table}.jsonl").open("rb") as lines:
                        summary.tables[f"shard-{i}/{table}"] = _insert_rows(shard, table, lines)
    return summary


def write_keys(keys: dict[str, Any], directory: Path) -> list[Path]:
    """The keys as the files swarm/make-secrets.sh makes (mode 600): aes_key, jwt_secret, and
    aes_previous_keys when there are any."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    written = []
    items = {"aes_key": keys["aes_key"], "jwt_secret": keys["jwt_secret"]}
    if keys.get("aes_previous_keys"):
        items["aes_previous_keys"] = ",".join(keys["aes_previous_keys"])
    for name, value in items.items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(value + "\n")
        written.append(path)
    return written
