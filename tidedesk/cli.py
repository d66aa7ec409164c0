"""The ``tidedesk`` command: ``dev``, ``chatnode``, ``router``, ``migrate``, ``admin``,
``loadgen``, ``settings``, ``controlplane`` and ``simulate``. Every subcommand has
``--help``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tidedesk import logs
from tidedesk.settings import Settings, SettingsError, load_settings, markdown_table

log = logging.getLogger("tidedesk")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def _settings(args: argparse.Namespace, role: str | None = None, **overrides: Any) -> Settings:
    return load_settings(config_file=args.config, role=role, **overrides)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of settings (keys as in README; TIDEDESK_* env vars win)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidedesk", description="Tidedesk: live-chat customer service that scales itself.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("dev", help="embedded mode: chat node + router in one process, SQLite",
                       description="Run everything in one process (no servers needed).")
    _add_config(p)
    p.add_argument("--port", type=int, help="HTTP port (default TIDEDESK_PORT or 8080)")
    p.add_argument("--host", help="bind address (default TIDEDESK_HOST or 127.0.0.1)")

    for name, text in (("chatnode", "run a chat node (cluster mode)"),
                       ("router", "run a router node (cluster mode)")):
        p = sub.add_parser(name, help=text, description=text)
        _add_config(p)
        if name == "chatnode":
            p.add_argument("--port", type=int, help="HTTP port (default TIDEDESK_PORT or 8080)")
            p.add_argument("--host", help="bind address (default TIDEDESK_HOST)")

    p = sub.add_parser("migrate", help="create or upgrade the database schema",
                       description="Create or upgrade the schema in every database shard.")
    _add_config(p)

    for name, text in (
        ("backup", "write every shard, the keys (sealed with a passphrase) and given files to "
                   "one backup file"),
        ("restore", "restore a backup into empty databases; write its keys and files out"),
    ):
        b = sub.add_parser(name, help=text, description=text + " (docs/deploy.md, Backups).")
        _add_config(b)
        if name == "backup":
            b.add_argument("--out", required=True, metavar="FILE",
                           help="the backup file, or - for standard output")
            b.add_argument("--include", action="append", default=[], metavar="FILE",
                           help="also keep this file (the policies, routing.yml); repeatable")
        else:
            b.add_argument("file", metavar="FILE", help="the backup file, or - for standard input")
            b.add_argument("--keys-out", metavar="DIR",
                           help="write the backup's aes_key and jwt_secret here (mode 600), as "
                           "swarm/make-secrets.sh names them")
            b.add_argument("--files-out", metavar="DIR", help="write the included files here")
            b.add_argument("--keys-only", action="store_true",
                           help="only open the keys and files; touch no database")
            b.add_argument("--replace", action="store_true",
                           help="replace rows already in the tables (default: refuse)")
        secret = b.add_mutually_exclusive_group(required=True)
        secret.add_argument("--passphrase-file", metavar="FILE",
                            help="the passphrase that seals the keys: first line of FILE")
        secret.add_argument("--passphrase-stdin", action="store_true",
                            help="the passphrase: first line of standard input")

    p = sub.add_parser("admin", help="manage agents", description="Manage agents.")
    admin = p.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    c = admin.add_parser("create-agent", help="create an agent",
                         description="Create an agent (prints the TOTP secret with --totp).")
    _add_config(c)
    c.add_argument("--email", required=True)
    pw_from = c.add_mutually_exclusive_group(required=True)
    pw_from.add_argument("--password", help="at least 8 characters (visible in `ps`: prefer "
                         "--password-file or --password-stdin)")
    pw_from.add_argument("--password-file", metavar="FILE",
                         help="read the password from the first line of FILE")
    pw_from.add_argument("--password-stdin", action="store_true",
                         help="read the password from the first line of standard input "
                         "(docker exec -i ... < file; no TTY needed)")
    c.add_argument("--name", required=True)
    c.add_argument("--pools", default="general", help="comma-separated pools (default general)")
    c.add_argument("--max-chats", type=int, default=3, help="concurrent chat limit (default 3)")
    c.add_argument("--role", default="agent", choices=("agent", "supervisor", "admin"))
    c.add_argument("--totp", action="store_true", help="require a TOTP second factor")
    ls = admin.add_parser("list-agents", help="list agents", description="List all agents.")
    _add_config(ls)
    rk = admin.add_parser(
        "rotate-key", help="re-encrypt stored visitor fields (and bodies) with the current key",
        description="Re-encrypt with TIDEDESK_AES_KEY every value written with a key listed in "
                    "TIDEDESK_AES_PREVIOUS_KEYS, encrypt names still stored in the clear, and "
                    "(with TIDEDESK_ENCRYPT_MESSAGE_BODIES) message bodies in the clear. Safe "
                    "to run again or to interrupt; afterwards the previous keys can be removed.")
    _add_config(rk)
    ri = admin.add_parser(
        "reindex-search", help="index for search the messages and contacts stored before it",
        description="Give full-text search the messages stored before issue 14's index existed "
                    "(their search column is empty) and make every contact's search tokens "
                    "again. Safe to run again or to interrupt.")
    _add_config(ri)

    sub.add_parser("settings", help="print every TIDEDESK_* setting with its default",
                   description="Print the settings table (Markdown, as in the README): every "
                               "TIDEDESK_<KEY>, its default and its meaning.")

    _add_loadgen(sub)
    sub.add_parser("controlplane", help="run the autoscaling control plane", add_help=False)
    sub.add_parser("simulate", help="replay a load trace through a scaling policy",
                   add_help=False)
    return parser


def _add_loadgen(sub: Any) -> None:
    p = sub.add_parser(
        "loadgen", help="load test: visitors and agents over WebSockets",
        description="Visitors and agents over real WebSockets (directly to a chat node or "
                    "through HAProxy): ramp-up, hold, ramp-down; reports connect rate, "
                    "messages/s, latency percentiles and errors.")
    p.add_argument("--url", default="http://127.0.0.1:8080",
                   help="chat node or HAProxy base URL (default http://127.0.0.1:8080)")
    p.add_argument("--visitors", type=int, default=10, help="visitors (default 10)")
    p.add_argument("--agents", type=int, default=0,
                   help="agents to sign in, the first N of --agents-file (default 0)")
    p.add_argument("--agents-file", metavar="FILE",
                   help="lines of email,password[,totp_secret] (tidedesk admin create-agent)")
    p.add_argument("--ramp-up", type=float, default=5.0, help="seconds (default 5)")
    p.add_argument("--hold", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--ramp-down", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--rate", type=float, default=0.5,
                   help="messages/s per visitor; 0 = closed loop (default 0.5; the server "
                        "allows TIDEDESK_RATE_LIMIT_PER_10S frames per 10 s)")
    p.add_argument("--window", type=int, default=1,
                   help="messages in flight per visitor with --rate 0 (default 1)")
    p.add_argument("--body-chars", type=int, default=40, help="message length (default 40)")
    p.add_argument("--assign-timeout", type=float, default=10.0,
                   help="seconds a visitor waits for an agent before giving up (default 10)")
    p.add_argument("--drain", type=float, default=5.0,
                   help="seconds to wait for the last acks and deliveries (default 5)")
    p.add_argument("--source-addresses", default="auto",
                   help="comma-separated local addresses to connect from, or 'auto' "
                        "(127.0.0.x when one address would run out of ephemeral ports)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")


def _loadgen(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path
    from urllib.parse import urlsplit

    from tidedesk import loadplan
    from tidedesk.loadgen import run_load

    agents: tuple[loadplan.AgentLogin, ...] = ()
    if args.agents < 0:
        raise SettingsError("--agents: must be 0 or more")
    if args.agents:
        if not args.agents_file:
            raise SettingsError("--agents: give the agents' sign-ins with --agents-file FILE "
                                "(lines of email,password[,totp_secret])")
        try:
            text = Path(args.agents_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"--agents-file: cannot read {args.agents_file}: "
                                f"{exc.strerror or exc}") from None
        agents = loadplan.parse_agents_file(text, args.agents)
    sources: tuple[str, ...] = ()
    if args.source_addresses != "auto":
        sources = tuple(a.strip() for a in args.source_addresses.split(",") if a.strip())
    plan = loadplan.check_plan(loadplan.LoadPlan(
        url=args.url, visitors=args.visitors, agents=agents, ramp_up_s=args.ramp_up,
        hold_s=args.hold, ramp_down_s=args.ramp_down, rate=args.rate, window=args.window,
        body_chars=args.body_chars, assign_timeout_s=args.assign_timeout, drain_s=args.drain,
        source_addresses=sources))
    if args.source_addresses == "auto":
        host = urlsplit(plan.url).hostname or ""
        needed = loadplan.sources_needed(2 * (plan.visitors + len(agents)),
                                         _port_range(), host)
        if needed > 1:
            if not loadplan.is_loopback(host):
                raise SettingsError(f"--source-addresses: {plan.visitors} visitors need "
                                    f"{needed} local addresses to reach {host}; list them")
            plan = loadplan.check_plan(dataclasses.replace(
                plan, source_addresses=loadplan.loopback_sources(needed)))
    progress = None
    if sys.stderr.isatty():
        def progress(line: str) -> None:
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
    report = asyncio.run(run_load(plan, progress))
    if progress is not None:
        sys.stderr.write("\n")
    print(loadplan.format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _port_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux), or its usual default elsewhere."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


async def _serve(settings: Settings, role: str) -> int:
    from tidedesk.eventloop import loop_name
    from tidedesk.heap import settle_after_startup
    from tidedesk.runtime import Runtime
    from tidedesk.startup import StartupTimeout

    runtime = Runtime(settings, role)
    try:
        await runtime.start()
    except StartupTimeout as exc:  # logged as JSON already; no traceback
        print(f"tidedesk: error: {exc}", file=sys.stderr)
        return 1
    settle_after_startup()  # tidedesk/heap.py: the collector's cost per message
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if role == "dev":
        base = f"http://{settings.host}:{runtime.port}"
        print(f"""
Tidedesk is running in embedded mode (SQLite at {settings.database_url[0]}).
  Widget demo page : {base}/demo
  Agent console    : {base}/console
  Supervisor view  : {base}/supervisor
  API              : {base}/api/v1/openapi.json
  Event loop       : {loop_name()} (TIDEDESK_EVENT_LOOP={settings.event_loop})
  Demo agent       : {settings.demo_agent_email} / {settings.demo_agent_password}
                     (set TIDEDESK_DEMO_AGENT_EMAIL / TIDEDESK_DEMO_AGENT_PASSWORD to change)
Press Ctrl-C to stop.""", flush=True)
    else:
        log.info("started", extra=runtime.describe())
    await stop.wait()
    log.info("stopping: draining connections")
    await runtime.stop()
    return 0


def _storage(settings: Settings) -> Any:
    """The directory with the deployment's key, so TOTP seeds are stored encrypted."""
    from tidedesk.crypto import FieldCipher
    from tidedesk.storage import Storage

    return Storage(settings.database_url,
                   cipher=FieldCipher(settings.aes_key, settings.aes_previous_keys),
                   encrypt_bodies=settings.encrypt_message_bodies)


def _first_line(path: str | None, what: str) -> str:
    """The first line of ``path`` (or of standard input when ``path`` is None)."""
    if path is None:
        line = sys.stdin.buffer.readline().decode("utf-8", "replace")
    else:
        try:
            with open(path, encoding="utf-8") as f:
                line = f.readline()
        except OSError as exc:
            raise SettingsError(f"{what}: cannot read {path}: {exc.strerror}") from None
    return line.rstrip("\r\n")


def _create_agent(args: argparse.Namespace) -> int:
    from tidedesk.auth import hash_password, new_totp_secret

    if args.password is None:
        args.password = _first_line(None if args.password_stdin else args.password_file,
                                    "--password-file")

    if not EMAIL_RE.match(args.email):
        raise SettingsError("--email: expected an e-mail address like agent@example.com")
    from tidedesk.passwords import password_problem

    problem = password_problem(args.password)
    if problem is not None:
        raise SettingsError(f"--password: {problem}")
    if not 1 <= args.max_chats <= 100:
        raise SettingsError("--max-chats: must be between 1 and 100")
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    if not pools:
        raise SettingsError("--pools: give at least one pool, e.g. --pools general")
    storage = _storage(_settings(args, role="admin"))
    try:
        storage.migrate_all()
        if storage.agents.by_email_sync(args.email) is not None:
            raise SettingsError(f"--email: an agent with {args.email} exists already")
        secret = new_totp_secret() if args.totp else None
        agent = storage.agents.create_sync(
            email=args.email, name=args.name, password_hash=hash_password(args.password),
            role=args.role, pools=pools, max_chats=args.max_chats, totp_secret=secret)
        storage.audit.record_sync("cli", "agent.create", args.email,
                           {"role": args.role, "totp": bool(secret)})
    finally:
        storage.close()
    print(f"created agent {agent.id} <{args.email}> role={args.role} pools={','.join(pools)} "
          f"max_chats={args.max_chats}")
    if secret:
        from tidedesk.auth import totp_uri

        uri = totp_uri(secret, args.email)
        print(f"TOTP secret: {secret}\nTOTP URI: {uri}")
    return 0


def _backup_or_restore(args: argparse.Namespace) -> int:
    import shutil

    from tidedesk import backup

    passphrase = _first_line(None if args.passphrase_stdin else args.passphrase_file,
                             "--passphrase-file")
    try:
        if args.command == "backup":
            settings = _settings(args)
            keys = {"aes_key": settings.aes_key, "jwt_secret": settings.jwt_secret,
                    "aes_previous_keys": list(settings.aes_previous_keys)}
            storage = _storage(settings)
            try:
                if args.out == "-":
                    summary = backup.write_backup(storage, keys, passphrase, sys.stdout.buffer,
                                                  args.include)
                    sys.stdout.buffer.flush()
                else:
                    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        summary = backup.write_backup(storage, keys, passphrase, out,
                                                      args.include)
            finally:
                storage.close()
            print(f"backed up {summary.rows} rows of {len(summary.tables)} tables in "
                  f"{summary.shards} shard(s), the keys and {len(summary.files)} file(s) to "
                  f"{args.out}", file=sys.stderr)
            return 0
        if args.file == "-":
            manifest, keys, files, dumps = backup.read_backup(sys.stdin.buffer, passphrase)
        else:
            try:
                with open(args.file, "rb") as src:
                    manifest, keys, files, dumps = backup.read_backup(src, passphrase)
            except OSError as exc:
                raise backup.BackupError(f"cannot read {args.file}: {exc.strerror}") from None
        try:
            if args.keys_out:
                for path in backup.write_keys(keys, Path(args.keys_out)):
                    print(f"wrote {path}", file=sys.stderr)
            if args.files_out:
                Path(args.files_out).mkdir(parents=True, exist_ok=True)
                for name, data in files.items():
                    (Path(args.files_out) / Path(name).name).write_bytes(data)
                    print(f"wrote {Path(args.files_out) / Path(name).name}", file=sys.stderr)
            if args.keys_only:
                return 0
            settings = _settings(args)
            if settings.aes_key != keys["aes_key"] and keys["aes_key"] not in \
                    settings.aes_previous_keys:
                print("tidedesk restore: warning: TIDEDESK_AES_KEY is not the backup's key; "
                      "visitors' encrypted fields stay unreadable until the stack runs with it "
                      "(--keys-out)", file=sys.stderr)
            storage = _storage(settings)
            try:
                summary = backup.restore_backup(storage, manifest, dumps, args.replace)
            finally:
                storage.close()
        finally:
            shutil.rmtree(dumps, ignore_errors=True)
        print(f"restored {summary.rows} rows of {len(summary.tables)} tables in "
              f"{summary.shards} shard(s) (backup of {manifest['created_at']})", file=sys.stderr)
        return 0
    except backup.BackupError as exc:
        print(f"tidedesk {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _list_agents(args: argparse.Namespace) -> int:
    storage = _storage(_settings(args, role="admin"))
    try:
        storage.migrate_all()
        agents = storage.agents.all_sync()
    finally:
        storage.close()
    print(f"{'id':>4}  {'email':<32} {'name':<20} {'role':<10} {'max':>3}  pools  2fa")
    for a in agents:
        print(f"{a.id:>4}  {a.email:<32} {a.name:<20} {a.role:<10} {a.max_chats:>3}  "
              f"{a.pools}  {'yes' if a.totp_secret else 'no'}")
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    storage = _storage(_settings(args, role="admin"))
    cipher = storage.cipher
    try:
        storage.migrate_all()
        try:
            counts = storage.rotate_key_sync()
        except ValueError as exc:
            raise SettingsError(f"TIDEDESK_AES_PREVIOUS_KEYS: {exc}") from None
        storage.audit.record_sync("cli", "admin.rotate_key", cipher.key_id, counts)
    finally:
        storage.close()
    print(f"re-encrypted with key {cipher.key_id}: {counts['visitor_fields']} visitor field(s), "
          f"{counts['agent_secrets']} TOTP secret(s), {counts['message_bodies']} message "
          f"bod(ies), {counts['attachment_fields']} attachment name(s) and list(s)")
    return 0


def _reindex_search(args: argparse.Namespace) -> int:
    storage = _storage(_settings(args))
    try:
        storage.migrate_all()
        counts = storage.reindex_search_sync()
    finally:
        storage.close()
    print(f"indexed {counts['messages']} message(s); {counts['contacts']} contact(s) re-indexed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The control plane and the simulator own their options.
    if argv and argv[0] == "controlplane":
        from controlplane.daemon import main as controlplane_main

        return int(controlplane_main(argv[1:]))
    if argv and argv[0] == "simulate":
        from controlplane.simulate import main as simulate_main

        return int(simulate_main(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("dev", "chatnode", "router"):
            overrides = {k: getattr(args, k) for k in ("port", "host")
                         if getattr(args, k, None) is not None}
            settings = _settings(args, role=args.command, **overrides)
            logs.configure(settings.log_level, settings.log_format, node_id=settings.node_id)
            from tidedesk.eventloop import EventLoopUnavailable, run

            try:
                return run(_serve(settings, args.command), settings.event_loop)
            except EventLoopUnavailable as exc:
                print(f"tidedesk: error: {exc}", file=sys.stderr)
                return 2
        if args.command == "migrate":
            from tidedesk.storage import Storage

            settings = _settings(args, role="migrate")
            storage = Storage(settings.database_url)
            try:
                version = storage.migrate_all()
            finally:
                storage.close()
            print(f"schema at version {version} in {len(settings.database_url)} database(s)")
            return 0
        if args.command == "loadgen":
            return _loadgen(args)
        if args.command == "settings":
            print(markdown_table(), end="")
            return 0
        if args.command in ("backup", "restore"):
            return _backup_or_restore(args)
        if args.command == "admin":
            if args.admin_command == "create-agent":
                return _create_agent(args)
            if args.admin_command == "rotate-key":
                return _rotate_key(args)
            if args.admin_command == "reindex-search":
                return _reindex_search(args)
            return _list_agents(args)
    except SettingsError as exc:
        print(f"tidedesk: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tidedesk: error: {exc.strerror or exc} "
              f"(is the port free? set TIDEDESK_PORT)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
