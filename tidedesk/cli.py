"""The ``tidedesk`` command: ``dev``, ``chatnode``, ``router``, ``migrate``, ``admin``,
``controlplane`` and ``simulate``. Every subcommand has ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

from tidedesk import logs
from tidedesk.settings import Settings, SettingsError, load_settings

log = logging.getLogger("tidedesk")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(config_file=args.config, **overrides)


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

    p = sub.add_parser("admin", help="manage agents", description="Manage agents.")
    admin = p.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    c = admin.add_parser("create-agent", help="create an agent",
                         description="Create an agent (prints the TOTP secret with --totp).")
    _add_config(c)
    c.add_argument("--email", required=True)
    c.add_argument("--password", required=True, help="at least 8 characters")
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

    sub.add_parser("controlplane", help="run the autoscaling control plane", add_help=False)
    sub.add_parser("simulate", help="replay a load trace through a scaling policy",
                   add_help=False)
    return parser


async def _serve(settings: Settings, role: str) -> int:
    from tidedesk.runtime import Runtime

    runtime = Runtime(settings, role)
    await runtime.start()
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


def _create_agent(args: argparse.Namespace) -> int:
    from tidedesk.auth import hash_password, new_totp_secret

    if not EMAIL_RE.match(args.email):
        raise SettingsError("--email: expected an e-mail address like agent@example.com")
    if len(args.password) < 8:
        raise SettingsError("--password: use at least 8 characters")
    if not 1 <= args.max_chats <= 100:
        raise SettingsError("--max-chats: must be between 1 and 100")
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    if not pools:
        raise SettingsError("--pools: give at least one pool, e.g. --pools general")
    storage = _storage(_settings(args))
    try:
        storage.migrate_all()
        if storage.agent_by_email_sync(args.email) is not None:
            raise SettingsError(f"--email: an agent with {args.email} exists already")
        secret = new_totp_secret() if args.totp else None
        agent = storage.create_agent_sync(
            email=args.email, name=args.name, password_hash=hash_password(args.password),
            role=args.role, pools=pools, max_chats=args.max_chats, totp_secret=secret)
        storage.audit_sync("cli", "agent.create", args.email,
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


def _list_agents(args: argparse.Namespace) -> int:
    storage = _storage(_settings(args))
    try:
        storage.migrate_all()
        agents = storage.list_agents_sync()
    finally:
        storage.close()
    print(f"{'id':>4}  {'email':<32} {'name':<20} {'role':<10} {'max':>3}  pools  2fa")
    for a in agents:
        print(f"{a.id:>4}  {a.email:<32} {a.name:<20} {a.role:<10} {a.max_chats:>3}  "
              f"{a.pools}  {'yes' if a.totp_secret else 'no'}")
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    storage = _storage(_settings(args))
    cipher = storage.cipher
    try:
        storage.migrate_all()
        try:
            counts = storage.rotate_key_sync()
        except ValueError as exc:
            raise SettingsError(f"TIDEDESK_AES_PREVIOUS_KEYS: {exc}") from None
        storage.audit_sync("cli", "admin.rotate_key", cipher.key_id, counts)
    finally:
        storage.close()
    print(f"re-encrypted with key {cipher.key_id}: {counts['visitor_fields']} visitor field(s), "
          f"{counts['agent_secrets']} TOTP secret(s), {counts['message_bodies']} message "
          "bod(ies)")
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
            settings = _settings(args, **overrides)
            logs.configure(settings.log_level, settings.log_format, node_id=settings.node_id)
            if args.command == "chatnode" and settings.embedded:
                raise SettingsError("tidedesk chatnode needs TIDEDESK_BROKER_URL and "
                                    "TIDEDESK_REDIS_URL (use 'tidedesk dev' for one process)")
            return asyncio.run(_serve(settings, args.command))
        if args.command == "migrate":
            from tidedesk.storage import Storage

            settings = _settings(args)
            storage = Storage(settings.database_url)
            try:
                version = storage.migrate_all()
            finally:
                storage.close()
            print(f"schema at version {version} in {len(settings.database_url)} database(s)")
            return 0
        if args.command == "admin":
            if args.admin_command == "create-agent":
                return _create_agent(args)
            if args.admin_command == "rotate-key":
                return _rotate_key(args)
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
