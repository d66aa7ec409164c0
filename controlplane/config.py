"""Daemon settings, read once at start-up from the command line and an injectable environment.

A bad value raises :class:`ConfigError` whose message names the option, the variable or the
policy field; the daemon prints it on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from controlplane.policy import Policy, PolicyError
from controlplane.policy_file import parse_policies
from controlplane.tls_probe import parse_target

DEFAULT_LISTEN = "127.0.0.1:8090"
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
DEFAULT_NOMAD_ADDR = "http://127.0.0.1:4646"
TOKEN_ENV = "TIDEDESK_CONTROLPLANE_TOKEN"
TOKENS_FILE_ENV = "TIDEDESK_CONTROLPLANE_TOKENS_FILE"
# What a token may do: `alerts` only posts Alertmanager webhooks, `read` only reads, `operate`
# does everything (the main token is `operate`, named MAIN_TOKEN_NAME).
TOKEN_ROLES = ("alerts", "read", "operate")
MAIN_TOKEN_NAME = "operator"
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STACK_ENV = "TIDEDESK_STACK"
STACK_PLACEHOLDER = "${STACK}"  # in a policy's service: the stack's name (issue 19)
_STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MIN_TOKEN_CHARS = 16  # a shorter bearer token is guessable
# The secret may hold the token's SHA-256 instead of the token: "sha256:<64 hex digits>". A fast
# hash is enough because the token is long and random (make-secrets.sh: 192 bits), so nobody can
# search its space; argon2 would only cost every API call tens of milliseconds and 64 MiB.
TOKEN_HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ApiToken:
    """One bearer token of the API: its name (the audit's actor), role and SHA-256 digest."""

    name: str
    role: str
    sha256: bytes


@dataclass(frozen=True)
class Settings:
    policies: tuple[Policy, ...]
    policies_file: Path
    host: str
    port: int
    prometheus_url: str
    token_sha256: bytes  # SHA-256 digest of the bearer token; the token itself is not kept
    token_is_plain: bool  # the secret held the token itself (accepted, with a warning)
    tokens: tuple[ApiToken, ...]  # the main token (operate) first, then the tokens file's
    nomad_addr: str
    nomad_token: str | None
    state_file: Path | None
    log_level: str
    tls_probes: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tidedesk controlplane",
        description="Autoscale Docker Swarm services and Nomad task groups from Prometheus "
        "metrics, with a REST API for pins, pauses and Alertmanager alerts.",
    )
    p.add_argument("--policies", metavar="FILE", help="policy YAML file (required; "
                   "or TIDEDESK_CONTROLPLANE_POLICIES)")
    p.add_argument("--listen", metavar="HOST:PORT", default=None,
                   help=f"REST API address (default {DEFAULT_LISTEN})")
    p.add_argument("--prometheus", metavar="URL", default=None,
                   help=f"Prometheus base URL (default $TIDEDESK_PROMETHEUS_URL or "
                   f"{DEFAULT_PROMETHEUS_URL})")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help=f"file holding the API bearer token's hash as sha256:<64 hex> (or the "
                   f"token itself), e.g. /run/secrets/... (else ${TOKEN_ENV})")
    p.add_argument("--tokens-file", metavar="FILE", default=None,
                   help="more API tokens, one a line: NAME ROLE SECRET (ROLE alerts, read or "
                   f"operate; SECRET sha256:<64 hex> or the token) (else ${TOKENS_FILE_ENV})")
    p.add_argument("--nomad-addr", metavar="URL", default=None,
                   help=f"Nomad HTTP API (default $NOMAD_ADDR or {DEFAULT_NOMAD_ADDR}); "
                   "token from $NOMAD_TOKEN")
    p.add_argument("--state-file", metavar="FILE", default=None,
                   help="JSON file keeping pins, pauses, actions and the audit list across "
                   "restarts (default: memory only)")
    p.add_argument("--stack", metavar="NAME", default=None,
                   help=f"fills in ${{STACK}} in the policies' service names (default "
                   f"${STACK_ENV}; docker-stack.yml sets it from the stack's namespace label)")
    p.add_argument("--tls-probe", metavar="HOST:PORT", action="append", default=[],
                   help="check the expiry of the certificate served there every 5 minutes "
                   "(tidedesk_tls_cert_expiry_timestamp_seconds); repeatable")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p  # fmt: skip


def parse_listen(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen: expected HOST:PORT such as {DEFAULT_LISTEN}, got {raw!r}")
    return host.strip("[]"), int(port)


def _url(raw: str, option: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{option}: expected an http(s):// URL, got {raw!r}")
    return raw.rstrip("/")


def hash_token(token: str) -> str:
    """What to store instead of ``token``: ``sha256:<hex>``."""
    return TOKEN_HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def token_digest(raw: str, source: str) -> tuple[bytes, bool]:
    """The SHA-256 digest to check bearer tokens against, and whether ``raw`` was a plain token.

    ``raw`` is ``sha256:<64 hex digits>`` (preferred) or, as older deployments have it, the
    token itself (at least MIN_TOKEN_CHARS characters, no spaces).
    """
    if raw.lower().startswith(TOKEN_HASH_PREFIX):
        hexdigest = raw[len(TOKEN_HASH_PREFIX) :]
        if not _HEX64.match(hexdigest):
            raise ConfigError(
                f"{source}: after 'sha256:' give the 64 hex digits of the token's SHA-256 "
                "(printf %s \"$TOKEN\" | sha256sum)"
            )
        return bytes.fromhex(hexdigest), False
    if len(raw) < MIN_TOKEN_CHARS or any(c.isspace() for c in raw):
        raise ConfigError(
            f"{source}: the token needs at least {MIN_TOKEN_CHARS} characters and no spaces "
            "(or store its hash as sha256:<64 hex digits>)"
        )
    return hashlib.sha256(raw.encode()).digest(), True


def fill_in_stack(policies: tuple[Policy, ...], stack: str, path: Path) -> tuple[Policy, ...]:
    """Replace ``${STACK}`` in every policy's service with the stack's name."""
    stack = stack.strip()
    uses = [p.name for p in policies if STACK_PLACEHOLDER in p.service]
    if not uses:
        return policies
    if not stack:
        raise ConfigError(
            f"{path}: policies {uses} name their service with {STACK_PLACEHOLDER}: pass --stack "
            f"or set {STACK_ENV} (docker-stack.yml sets it from com.docker.stack.namespace)"
        )
    if not _STACK_NAME.match(stack):
        raise ConfigError(f"--stack / {STACK_ENV}: not a stack name: {stack!r}")
    return tuple(
        dataclasses.replace(p, service=p.service.replace(STACK_PLACEHOLDER, stack))
        for p in policies
    )


def load_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    policies_path = args.policies or env.get("TIDEDESK_CONTROLPLANE_POLICIES")
    if not policies_path:
        raise ConfigError("--policies: give the policy YAML file")
    path = Path(policies_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--policies: cannot read {path}: {exc}") from None
    try:
        policies = parse_policies(text)
    except PolicyError as exc:
        raise ConfigError(f"{path}: {exc}") from None

    policies = fill_in_stack(policies, args.stack or env.get(STACK_ENV, ""), path)

    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file: cannot read {args.token_file}: {exc}") from None
        source = "--token-file"
    else:
        token = env.get(TOKEN_ENV, "").strip()
        source = TOKEN_ENV
    if not token:
        raise ConfigError(f"{TOKEN_ENV}: set it, or pass --token-file (e.g. a Docker secret)")
    digest, plain = token_digest(token, source)
    tokens = (ApiToken(MAIN_TOKEN_NAME, "operate", digest),
              *read_tokens_file(args.tokens_file or env.get(TOKENS_FILE_ENV)))
    if len({t.name for t in tokens}) != len(tokens):
        raise ConfigError(f"--tokens-file: token names must be unique (and not "
                          f"{MAIN_TOKEN_NAME!r}, the main token's)")

    host, port = parse_listen(args.listen or DEFAULT_LISTEN)
    prometheus = _url(
        args.prometheus or env.get("TIDEDESK_PROMETHEUS_URL") or DEFAULT_PROMETHEUS_URL,
        "--prometheus",
    )
    nomad_addr = _url(args.nomad_addr or env.get("NOMAD_ADDR") or DEFAULT_NOMAD_ADDR,
                      "--nomad-addr")  # fmt: skip
    for target in args.tls_probe:
        try:
            parse_target(target)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    state_file = Path(args.state_file) if args.state_file else None
    if state_file is not None and not state_file.parent.is_dir():
        raise ConfigError(f"--state-file: directory {state_file.parent} does not exist")
    return Settings(
        policies=policies,
        policies_file=path,
        host=host,
        port=port,
        prometheus_url=prometheus,
        token_sha256=digest,
        token_is_plain=plain,
        tokens=tokens,
        nomad_addr=nomad_addr,
        nomad_token=env.get("NOMAD_TOKEN") or None,
        state_file=state_file,
        log_level=args.log_level,
        tls_probes=tuple(args.tls_probe),
    )


def read_tokens_file(path: str | None) -> tuple[ApiToken, ...]:
    """The API tokens of ``path``: ``NAME ROLE SECRET`` a line, ``#`` comments."""
    if not path:
        return ()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--tokens-file: cannot read {path}: {exc}") from None
    tokens = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"--tokens-file {path} line {n}"
        if len(parts) != 3:
            raise ConfigError(f"{where}: expected NAME ROLE SECRET")
        name, role, secret = parts
        if not _TOKEN_NAME.match(name):
            raise ConfigError(f"{where}: a name is 1-64 of A-Z a-z 0-9 _ . -")
        if role not in TOKEN_ROLES:
            raise ConfigError(f"{where}: role must be one of {', '.join(TOKEN_ROLES)}")
        tokens.append(ApiToken(name, role, token_digest(secret, where)[0]))
    return tuple(tokens)
