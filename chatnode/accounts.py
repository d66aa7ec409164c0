"""Agents' accounts: sign-in (growing delays, lock), tokens (rotation, reuse detection,
sign-out), the TOTP second factor and roles. Handlers stay thin; the pure decisions live in
:mod:`tidedesk.auth`; the state lives in the store seam (Redis in a cluster) and the database.
See docs/security.md.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatnode.access import describe, scopes_of
from chatnode.errors import ServiceError
from tidedesk.auth import (
    ROLES,
    AuthError,
    Principal,
    RefreshFamily,
    TokenService,
    api_token_hash,
    hash_password,
    is_api_token,
    new_token_id,
    new_totp_secret,
    normalise_totp,
    qr_svg_data_uri,
    refresh_verdict,
    signin_wait,
    source_of,
    totp_uri,
    verify_password,
    verify_totp,
)
from tidedesk.settings import Settings
from tidedesk.storage import Storage
from tidedesk.store import Store

# A TOTP secret offered by enrolment waits this long for its confirming code.
TOTP_PENDING_SECS = 600
# A code that signed in is refused after that for as long as it could still verify (its 30 s
# step plus one step of drift either side).
TOTP_USED_SECS = 120
# A sign-in attempt holds its account this long at most (it releases it when it ends).
LOGIN_BUSY_SECS = 10
ROLE_NAMES = ", ".join(ROLES)
# A WebSocket ticket (POST /api/v1/ws-ticket) is good for one connect within this many seconds.
WS_TICKET_SECS = 30
# A one-time invitation link is valid this long.
INVITE_TTL_SECS = 7 * 86400
# The role-change marker of a deactivated agent: no token names it, so all are stale.
DEACTIVATED = "deactivated"
_POOL_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
# The store's value for an ended sign-in (kept as long as its refresh token could live).
REVOKED = "revoked"


def _family_key(family: str) -> str:
    return f"refresh-family:{family}"


def _role_key(agent_id: str) -> str:
    return f"role-changed:{agent_id}"


# Sent to every chat node where an agent is connected when one of their sign-ins ends or their
# role changes; each node closes the sockets it applies to (see ``session_end_applies``).
SESSION_ENDED = "session_ended"

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]
# (account e-mail, event, details): a notice for the account's owner (e-mail, issue 13b).
OwnerMail = Callable[[str, str, dict[str, Any]], Awaitable[None]]


def session_end_applies(principal: Principal, notice: dict[str, Any]) -> tuple[str, str] | None:
    """(error code, message) to close a socket opened with ``principal`` after ``notice``,
    or None when the notice is about another sign-in (pure)."""
    if notice.get("reason") == "role_changed":
        if principal.role != notice.get("role"):
            return "token_stale", ("your role changed: refresh your token "
                                   "(POST /api/v1/auth/refresh) and connect again")
        return None
    if notice.get("family") == principal.family:
        return "token_revoked", "this sign-in has ended (signed out, or revoked); sign in again"
    return None


async def _no_notify(who: str, frame: dict[str, Any]) -> None:
    return None


class Accounts:
    def __init__(self, *, settings: Settings, store: Store, storage: Storage,
                 tokens: TokenService, clock: Callable[[], float] = time.time,
                 notify: Notify = _no_notify) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.tokens = tokens
        self.clock = clock
        # Best effort, to the agent's open sockets; REST and new connections check the store.
        self.notify = notify
        self.mail: OwnerMail | None = None

    def principal(self, token: str | None, expected: str) -> Principal:
        """The principal of a valid token of kind ``expected``; 401 otherwise."""
        try:
            return self.tokens.decode(token, expected)
        except AuthError as exc:
            raise ServiceError(401, exc.code, exc.message) from None

    async def agent_for(self, principal: Principal) -> Any:
        agent = await self.storage.agents.get(principal.id)
        if agent is None or not agent.active:
            raise ServiceError(401, "invalid_token", "this account no longer exists")
        return agent

    async def profile(self, principal: Principal) -> dict[str, Any]:
        """What ``GET /api/v1/me`` shows the signed-in agent about their account."""
        agent = await self.agent_for(principal)
        return {"id": str(agent.id), "name": agent.name, "email": agent.email,
                "role": agent.role, "pools": list(agent.pool_list),
                "max_chats": agent.max_chats, "totp": bool(agent.totp_secret)}

    async def authenticate(self, token: str | None, who: frozenset[str]) -> Principal:
        """The principal of ``token`` if it may act as one of ``who`` (agent roles and/or
        ``visitor``): 401 for a missing, expired, forged or signed-out token, 403 for a valid
        token of the wrong kind or role."""
        if is_api_token(token):
            return await self.api_principal(str(token), who)
        kinds = (["access"] if who - {"visitor"} else []) + (["visitor"] if "visitor" in who
                                                             else [])
        principal: Principal | None = None
        first: AuthError | None = None
        for kind in kinds:
            try:
                principal = self.tokens.decode(token, kind)
                break
            except AuthError as exc:
                first = first or exc
        if principal is None:
            wrong_kind = first is not None and first.code == "invalid_token" and any(
                self._decodes(token, k) for k in ("access", "visitor"))
            if wrong_kind:
                raise ServiceError(403, "forbidden", f"this needs {describe(who)} credentials")
            assert first is not None
            raise ServiceError(401, first.code, first.message)
        if principal.kind == "agent":
            await self.check_live(principal)
            if principal.role not in who:
                raise ServiceError(403, "forbidden", f"this needs the role {describe(who)}; "
                                   f"you are {principal.role}")
        return principal

    async def api_principal(self, token: str, who: frozenset[str]) -> Principal:
        """An integration's token: 401 unless it is live (looked up by its hash on every
        request, so a revoked token is refused at once on every node), 403 unless it carries
        a scope ``who`` admits."""
        record = await self.storage.api_tokens.live_by_hash(api_token_hash(token))
        if record is None:
            raise ServiceError(401, "invalid_token", "this API token is unknown or was "
                               "revoked; create a new one (POST /api/v1/api-tokens)")
        needed = scopes_of(who)
        if not needed & set(record.scopes):
            raise ServiceError(403, "forbidden", f"this needs {describe(who)}; this token's "
                               f"scopes are {', '.join(record.scopes) or 'none'}")
        return Principal(kind="api", id=record.id, role="", scopes=record.scopes,
                         name=record.name)

    def _decodes(self, token: str | None, kind: str) -> bool:
        try:
            self.tokens.decode(token, kind)
        except AuthError:
            return False
        return True

    async def check_live(self, principal: Principal) -> None:
        """An agent token's sign-in must still be live (not signed out, not revoked by a
        reused refresh token), and the token must postdate the agent's last role change (it
        names the role it was issued with: a demoted supervisor refreshes to the new role)."""
        if await self.family_state(principal.family) is None:
            raise ServiceError(401, "token_revoked", "this sign-in has ended (signed out, or "
                               "revoked); sign in again")
        role = await self.store.kv_get(_role_key(principal.id), self.clock())
        if role is not None and principal.role != role:
            raise ServiceError(401, "token_stale", "your role changed since this token was "
                               "issued: refresh it (POST /api/v1/auth/refresh)")

    async def family_state(self, family: str) -> str | None:
        """The store's value for a sign-in, or None once it has ended. A store that lost the
        value (it restarted) asks the database whether the sign-in was ended and, if not, takes
        it back, so a Redis or embedded-process restart signs nobody out."""
        key, now = _family_key(family), self.clock()
        raw = await self.store.kv_get(key, now)
        if raw is None:
            if await self.storage.sign_ins.is_revoked(family):
                await self.store.kv_set(key, REVOKED, self.tokens.refresh_ttl_s, now)
                return None
            await self.store.kv_swap(key, None, RefreshFamily("").encode(),
                                     self.tokens.refresh_ttl_s, now)
            raw = await self.store.kv_get(key, now)
        return None if raw in (None, REVOKED) else raw

    async def end_sign_in(self, family: str, agent_id: str, reason: str) -> None:
        await self.storage.sign_ins.revoke(family, agent_id, reason)
        await self.store.kv_set(_family_key(family), REVOKED, self.tokens.refresh_ttl_s,
                                self.clock())
        await self.notify(f"agent:{agent_id}", {"type": SESSION_ENDED, "reason": reason,
                                                 "family": family})

    async def login(self, email: Any, password: Any, totp: Any, *, ip: str = "") -> dict[str, Any]:
        if not isinstance(email, str) or not isinstance(password, str):
            raise ServiceError(400, "invalid_body", "send {\"email\": str, \"password\": str, "
                               "\"totp\"?: str}")
        if len(email) > 254 or len(password) > 1024:
            raise ServiceError(400, "invalid_field", "'email' has at most 254 characters and "
                               "'password' at most 1024")
        account, source = email.strip().lower(), source_of(ip)
        # One attempt per account and source at a time: parallel guesses would all read the
        # same failure count before any of them added to it, and so pass the delays and the
        # lock. Per source, so a stranger's flood never makes the owner wait.
        busy_key, now = f"login-busy:{account}|{source}", self.clock()
        if not await self.store.kv_swap(busy_key, None, "1", LOGIN_BUSY_SECS, now):
            raise ServiceError(429, "rate_limited", "a sign-in to this account is under way; "
                               "try again in a second", retry_after=1)
        try:
            return await self._login(account, email, password, totp, ip, source, now)
        finally:
            await self.store.kv_delete(busy_key)

    async def _throttle(self, scope: str, lock_after: int, now: float, what: str,
                        delays: bool = True) -> None:
        """429 while the failures counted under ``scope`` make the next attempt wait (growing
        delays then the lock; with ``delays`` off, only the lock)."""
        s = self.settings
        failures = int(await self.store.kv_get(f"{scope}:n", now) or 0)
        if not delays and failures < lock_after:
            return
        last = float(await self.store.kv_get(f"{scope}:last", now) or 0)
        wait = signin_wait(failures, last, now, lock_after=lock_after, lock_s=s.login_lock_s)
        if wait > 0:
            locked = failures >= lock_after
            raise ServiceError(429, "account_locked" if locked else "rate_limited",
                               (f"too many failed {what}: locked for now; " if locked
                                else f"too many failed {what}; ")
                               + f"try again in {int(wait) + 1} s", retry_after=int(wait) + 1)

    async def _count_failure(self, scope: str, now: float) -> int:
        s = self.settings
        count = await self.store.kv_incr(f"{scope}:n", s.login_lock_s, now)
        await self.store.kv_set(f"{scope}:last", repr(now), s.login_lock_s, now)
        return count

    async def _login(self, account: str, email: str, password: str, totp: Any, ip: str,
                     source: str, now: float) -> dict[str, Any]:
        s = self.settings
        # Three counters. (account, source): growing delays, then a lock of that pair only,
        # so a stranger's guesses never lock the owner out of their own addresses. (source):
        # one address guessing many accounts is locked after login_source_lock_after. (account,
        # all sources): only counted, to tell the owner (audit, and mail once it exists).
        pair, from_source = f"login:{account}|{source}", f"login-src:{source}"
        await self._throttle(pair, s.login_lock_after, now, "sign-ins to this account from "
                             "your address")
        # No delays per source: an office behind one address has many agents who mistype.
        await self._throttle(from_source, s.login_source_lock_after, now,
                             "sign-ins from your address", delays=False)

        async def refuse(code: str, message: str) -> ServiceError:
            count = await self._count_failure(pair, now)
            source_count = await self._count_failure(from_source, now)
            total = await self.store.kv_incr(f"login-all:{account}", s.login_lock_s, now)
            await self.storage.audit.record(f"ip:{ip}", "auth.login_failed", account,
                                            {"reason": code, "failures": count,
                                             "source": source})
            if count >= s.login_lock_after:
                # The count's window began at the first failure: hold it for the whole lock.
                await self.store.kv_set(f"{pair}:n", str(count), s.login_lock_s, now)
            if count == s.login_lock_after:
                await self.storage.audit.record("system", "auth.locked", account,
                                                {"for_s": s.login_lock_s, "source": source})
            if source_count == s.login_source_lock_after:
                await self.store.kv_set(f"{from_source}:n", str(source_count), s.login_lock_s,
                                        now)
                await self.storage.audit.record("system", "auth.source_locked", source,
                                                {"for_s": s.login_lock_s})
            if total == s.login_lock_after:
                await self.owner_notice(account, "auth.failures", {
                    "failures": total, "window_s": s.login_lock_s, "last_source": source})
            return ServiceError(401, code, message)

        agent = await self.storage.agents.by_email(email)
        known_hash = agent.password_hash if agent is not None and agent.active else None
        # argon2 takes tens of milliseconds of CPU: off the event loop, where every chat waits.
        # An unknown account is checked against a dummy hash: the same time either way.
        if not await asyncio.to_thread(verify_password, known_hash, password) or agent is None:
            raise await refuse("invalid_credentials", "wrong email or password")
        if agent.totp_secret:
            if totp is None or totp == "":
                raise ServiceError(401, "totp_required", "this account uses two-factor sign-in: "
                                   "send the 6-digit code from your authenticator as 'totp'")
            if not isinstance(totp, str) or not verify_totp(agent.totp_secret, totp, now):
                raise await refuse("invalid_totp", "the two-factor code is wrong or expired")
            # A code seen on its way (shoulder, proxy log) must not sign in a second time; the
            # key is the normalised code, so the same digits in another script are the same.
            if not await self.store.kv_swap(f"totp-used:{agent.id}:{normalise_totp(totp)}",
                                            None, "1", TOTP_USED_SECS, now):
                raise await refuse("invalid_totp", "this code was used already; wait for the "
                                   "next one in your authenticator")
        await self.store.kv_delete(f"{pair}:n")
        await self.store.kv_delete(f"{pair}:last")
        family = new_token_id()
        await self.storage.audit.record(f"agent:{agent.id}", "auth.login", agent.email,
                                 {"ip": ip, "family": family})
        return await self._issue(agent, family)

    async def owner_notice(self, account: str, event: str, details: dict[str, Any]) -> None:
        """Tell an account's owner something happened to it: an audit entry now, and the
        ``mail`` seam (a coroutine set by whoever wires the outbox: issue 13b) when there."""
        await self.storage.audit.record("system", event, account, details)
        if self.mail is not None:
            await self.mail(account, event, details)

    async def _issue(self, agent: Any, family: str) -> dict[str, Any]:
        jti = new_token_id()
        now = self.clock()
        await self.store.kv_set(_family_key(family), RefreshFamily(jti).encode(),
                                self.tokens.refresh_ttl_s, now)
        return self.tokens.agent_tokens(str(agent.id), agent.role, family=family, jti=jti,
                                        now=now)

    async def refresh(self, refresh_token: Any) -> dict[str, Any]:
        """Rotate: the refresh token is spent and a new pair issued. A refresh token used a
        second time means it was copied: the whole sign-in (family) is revoked."""
        if not isinstance(refresh_token, str):
            raise ServiceError(400, "invalid_body", "send {\"refresh_token\": str}")
        principal = self.principal(refresh_token, "refresh")
        agent = await self.agent_for(principal)
        key, now = _family_key(principal.family), self.clock()
        jti = new_token_id()
        for _ in range(2):  # a lost race re-reads once: the winner made it a sibling's token
            raw = await self.family_state(principal.family)
            verdict = refresh_verdict(RefreshFamily.decode(raw), principal.jti, now)
            if verdict != "rotate":
                break
            if await self.store.kv_swap(key, raw, RefreshFamily(jti, principal.jti, now).encode(),
                                        self.tokens.refresh_ttl_s, now):
                return self.tokens.agent_tokens(str(agent.id), agent.role,
                                                family=principal.family, jti=jti, now=now)
        if verdict == "sibling":
            raise ServiceError(401, "token_rotated", "this refresh token was replaced a moment "
                               "ago (another tab refreshed): use the tokens it received")
        if verdict == "reused":
            await self.end_sign_in(principal.family, principal.id, "refresh_reused")
            await self.storage.audit.record(f"agent:{agent.id}", "auth.refresh_reused", agent.email,
                                     {"family": principal.family})
            raise ServiceError(401, "token_reused", "this refresh token was used before: the "
                               "sign-in is revoked everywhere; sign in again")
        raise ServiceError(401, "token_revoked", "this sign-in has ended; sign in again")

    async def logout(self, refresh_token: Any, bearer: str | None) -> None:
        """End a sign-in (its family): by its refresh token, or by its access token."""
        if isinstance(refresh_token, str):
            principal = self.principal(refresh_token, "refresh")
        elif refresh_token is None and bearer:
            principal = self.principal(bearer, "access")
        else:
            raise ServiceError(400, "invalid_body", "send {\"refresh_token\": str}, or the "
                               "access token as 'Authorization: Bearer <token>'")
        await self.end_sign_in(principal.family, principal.id, "logout")
        await self.storage.audit.record(f"agent:{principal.id}", "auth.logout", "",
                                 {"family": principal.family})

    # -- WebSocket tickets ----------------------------------------------------------------------
    async def ws_ticket(self, token: str | None) -> dict[str, Any]:
        """A one-time ticket standing for ``token`` (already checked by the route's rule), so
        the WebSocket URL never carries the bearer token (URLs end up in access logs). Kept in
        the store seam: any chat node can redeem it."""
        assert token is not None
        ticket = secrets.token_urlsafe(24)
        await self.store.kv_set(f"ws-ticket:{ticket}", token, WS_TICKET_SECS, self.clock())
        return {"ticket": ticket, "expires_in": WS_TICKET_SECS}

    async def redeem_ws_ticket(self, ticket: str) -> str:
        """The token a ticket stands for, once: the first redeemer wins (compare-and-set), a
        second use or an expired ticket gets 401 ``invalid_ticket``."""
        key, now = f"ws-ticket:{ticket}", self.clock()
        token = await self.store.kv_get(key, now) if len(ticket) <= 64 else None
        if not token or not await self.store.kv_swap(key, token, "", WS_TICKET_SECS, now):
            raise ServiceError(401, "invalid_ticket", "this ticket is unknown, expired or used: "
                               "get a new one (POST /api/v1/ws-ticket) and connect within "
                               f"{WS_TICKET_SECS} s")
        return token

    async def report_theft(self, refresh_token: Any) -> dict[str, Any]:
        """The console saw ``token_rotated`` while no tab of it held the newer token: someone
        else spent its refresh token. End the sign-in everywhere and audit it."""
        if not isinstance(refresh_token, str):
            raise ServiceError(400, "invalid_body", "send {\"refresh_token\": str}")
        try:
            principal = self.tokens.decode(refresh_token, "refresh")
        except AuthError as exc:
            raise ServiceError(401, exc.code, exc.message) from None
        agent = await self.agent_for(principal)
        await self.end_sign_in(principal.family, principal.id, "theft_reported")
        await self.owner_notice(agent.email, "auth.theft_reported", {"family": principal.family})
        return {"revoked": True}

    # -- two-factor enrolment -----------------------------------------------------------------
    async def totp_enrol(self, principal: Principal) -> dict[str, Any]:
        """A new secret, its otpauth URI and QR code; active once confirmed with a code."""
        agent = await self.agent_for(principal)
        if agent.totp_secret:
            # Else a stolen access token could swap in the thief's own second factor.
            raise ServiceError(409, "totp_on", "two-factor sign-in is already on: turn it off "
                               "first with a current code (POST /api/v1/me/totp/disable)")
        secret = new_totp_secret()
        await self.store.kv_set(f"totp-pending:{agent.id}", secret, TOTP_PENDING_SECS,
                                self.clock())
        uri = totp_uri(secret, agent.email)
        await self.storage.audit.record(f"agent:{agent.id}", "2fa.enrol_started", agent.email)
        return {"secret": secret, "otpauth_uri": uri, "qr_svg": qr_svg_data_uri(uri),
                "expires_in": TOTP_PENDING_SECS}

    async def totp_confirm(self, principal: Principal, code: Any) -> dict[str, Any]:
        agent = await self.agent_for(principal)
        if agent.totp_secret:
            raise ServiceError(409, "totp_on", "two-factor sign-in is already on: turn it off "
                               "first with a current code (POST /api/v1/me/totp/disable)")
        now = self.clock()
        secret = await self.store.kv_get(f"totp-pending:{agent.id}", now)
        if secret is None:
            raise ServiceError(409, "no_enrolment", "start with POST /api/v1/me/totp (an "
                               f"enrolment is kept for {TOTP_PENDING_SECS // 60} minutes)")
        await self._check_code(agent, secret, code, now, "the code does not match: send the "
                               "6-digit code your authenticator shows now as 'code'")
        await self.storage.agents.update(agent.id, totp_secret=secret)
        await self.store.kv_delete(f"totp-pending:{agent.id}")
        await self.storage.audit.record(f"agent:{agent.id}", "2fa.enabled", agent.email)
        return {"totp": True}

    async def totp_disable(self, principal: Principal, code: Any) -> dict[str, Any]:
        agent = await self.agent_for(principal)
        if not agent.totp_secret:
            raise ServiceError(409, "totp_off", "two-factor sign-in is not on for this account")
        await self._check_code(agent, agent.totp_secret, code, self.clock(), "send the current "
                               "6-digit code as 'code' to turn two-factor sign-in off")
        await self.storage.agents.update(agent.id, totp_secret=None)
        await self.storage.audit.record(f"agent:{agent.id}", "2fa.disabled", agent.email)
        return {"totp": False}

    async def _check_code(self, agent: Any, secret: str, code: Any, now: float,
                          wrong: str) -> None:
        """A TOTP code for enrolment or turning it off, throttled like a sign-in (growing
        delays, then a lock): a stolen access token must not guess its way to turning 2FA off.
        """
        scope = f"totp-check:{agent.id}"
        await self._throttle(scope, self.settings.login_lock_after, now, "two-factor codes")
        if not isinstance(code, str) or not verify_totp(secret, code, now):
            count = await self._count_failure(scope, now)
            await self.storage.audit.record(f"agent:{agent.id}", "2fa.code_failed", agent.email,
                                            {"failures": count})
            raise ServiceError(400, "invalid_totp", wrong)
        await self.store.kv_delete(f"{scope}:n")
        await self.store.kv_delete(f"{scope}:last")

    async def require_second_factor(self, principal: Principal) -> None:
        """The guard every admin change calls first (roles, settings, sites, tokens...): with
        ``TIDEDESK_ADMIN_REQUIRE_2FA`` on, an admin without a second factor gets 403 and is told
        to turn it on. A stolen password alone must not be enough to take the desk over."""
        if not self.settings.admin_require_2fa:
            return
        agent = await self.agent_for(principal)
        if not agent.totp_secret:
            raise ServiceError(403, "second_factor_required", "admin changes need two-factor "
                               "sign-in: turn it on first (POST /api/v1/me/totp, then "
                               "/api/v1/me/totp/confirm)")

    # -- administration -------------------------------------------------------------------------
    async def set_role(self, principal: Principal, agent_id: str, role: Any) -> dict[str, Any]:
        await self.require_second_factor(principal)
        if role not in ROLES:
            raise ServiceError(400, "invalid_field", f"'role' must be one of {ROLE_NAMES}")
        target = await self.storage.agents.get(agent_id)
        if target is None:
            raise ServiceError(404, "not_found", f"no agent {agent_id!r}")
        if role == target.role:
            return {"id": str(target.id), "role": role}  # nothing changes, no token goes stale
        if str(target.id) == principal.id and role != "admin":
            raise ServiceError(409, "last_admin_guard", "you cannot take the admin role from "
                               "yourself; ask another admin")
        await self.storage.agents.update(target.id, role=role)
        # Access tokens naming another role are refused until refreshed (refresh reads the
        # role from the database). Kept as long as such a token can live.
        now = self.clock()
        await self.store.kv_set(_role_key(str(target.id)), role,
                                self.tokens.access_ttl_s + 60, now)
        await self.notify(f"agent:{target.id}", {"type": SESSION_ENDED, "reason": "role_changed",
                                                  "role": role})
        await self.storage.audit.record(f"agent:{principal.id}", "agent.role_changed", target.email,
                                 {"from": target.role, "to": role})
        return {"id": str(target.id), "role": role}

    async def update_agent(self, principal: Principal, agent_id: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        """Admin: change an agent's ``name``, ``pools``, ``max_chats``, or deactivate them
        (``active`` false): their tokens are refused at once (as after a role change, on
        every node: the store is shared), their open sockets close, and they go offline, which
        is the seam through which their chats are given back (issue 13's give-back)."""
        allowed = {"name", "pools", "max_chats", "active"}
        unknown = set(body) - allowed
        if unknown:
            raise ServiceError(400, "invalid_body", f"unknown field(s) "
                               f"{', '.join(sorted(unknown))}; allowed: active, max_chats, name, "
                               "pools (the role has its own call: POST .../role)")
        fields: dict[str, Any] = {}
        if "name" in body:
            name = body["name"]
            if not isinstance(name, str) or not 1 <= len(name.strip()) <= 120:
                raise ServiceError(400, "invalid_field", "'name' must be 1-120 characters")
            fields["name"] = name.strip()
        if "pools" in body:
            pools = body["pools"]
            if (not isinstance(pools, list) or not pools or not all(
                    isinstance(p, str) and _POOL_RE.match(p) for p in pools)):
                raise ServiceError(400, "invalid_field", "'pools' must be a non-empty list of "
                                   "pool names (1-64 of a-z 0-9 _ -)")
            fields["pools"] = ",".join(dict.fromkeys(pools))
        if "max_chats" in body:
            limit = body["max_chats"]
            if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 50:
                raise ServiceError(400, "invalid_field", "'max_chats' must be 0-50")
            fields["max_chats"] = limit
        if "active" in body:
            if not isinstance(body["active"], bool):
                raise ServiceError(400, "invalid_field", "'active' must be true or false")
            fields["active"] = body["active"]
        target = await self.storage.agents.get(agent_id)
        if target is None:
            raise ServiceError(404, "not_found", f"no agent {agent_id!r}")
        if fields.get("active") is False and str(target.id) == principal.id:
            raise ServiceError(409, "last_admin_guard", "you cannot deactivate yourself; ask "
                               "another admin")
        if fields:
            await self.storage.agents.update(target.id, **fields)
        if fields.get("active") is False and target.active:
            now = self.clock()
            # No token names this role, so every token of the agent is stale now, and a
            # refresh finds the account inactive.
            await self.store.kv_set(_role_key(str(target.id)), DEACTIVATED,
                                    self.tokens.access_ttl_s + 60, now)
            await self.notify(f"agent:{target.id}", {"type": SESSION_ENDED,
                                                      "reason": "role_changed",
                                                      "role": DEACTIVATED})
        await self.storage.audit.record(principal.actor, "agent.updated", target.email,
                                        {k: v for k, v in fields.items()})
        updated = await self.storage.agents.get(agent_id)
        assert updated is not None
        return {"id": str(updated.id), "name": updated.name, "role": updated.role,
                "pools": list(updated.pool_list), "max_chats": updated.max_chats,
                "active": updated.active}

    async def invite(self, principal: Principal, body: dict[str, Any],
                     ttl_s: float = INVITE_TTL_SECS) -> dict[str, Any]:
        """Admin: create an agent who sets their own password through a one-time link (the
        link's token is shown once; only its SHA-256 is kept)."""
        allowed = {"email", "name", "role", "pools", "max_chats"}
        unknown = set(body) - allowed
        if unknown:
            raise ServiceError(400, "invalid_body", f"unknown field(s) "
                               f"{', '.join(sorted(unknown))}; allowed: "
                               f"{', '.join(sorted(allowed))}")
        email = body.get("email")
        if not isinstance(email, str) or "@" not in email or len(email) > 254:
            raise ServiceError(400, "invalid_field", "'email' must be an e-mail address")
        role = body.get("role", "agent")
        if role not in ROLES:
            raise ServiceError(400, "invalid_field", f"'role' must be one of {ROLE_NAMES}")
        email = email.strip().lower()
        if await self.storage.agents.by_email(email) is not None:
            raise ServiceError(409, "email_taken", f"an agent with {email} exists already")
        token = secrets.token_urlsafe(32)
        agent = await asyncio.to_thread(self.storage.agents.create_sync, email=email,
                                        name=str(body.get("name") or email.split("@")[0]),
                                        password_hash=hash_password(secrets.token_hex(32)),
                                        role=role, pools=("general",), max_chats=3,
                                        totp_secret=None)
        await self.storage.agents.update(agent.id, invite_hash=api_token_hash(token),
                                         invite_expires=self.clock() + ttl_s)
        rest: dict[str, Any] = {k: body[k] for k in ("pools", "max_chats") if k in body}
        if rest:
            await self.update_agent(principal, str(agent.id), rest)
        await self.storage.audit.record(principal.actor, "agent.invited", email, {"role": role})
        return {"id": str(agent.id), "email": email, "invite_url": f"/console#invite={token}",
                "expires_in": int(ttl_s)}

    async def accept_invite(self, token: Any, password: Any) -> dict[str, Any]:
        """Public: the invited agent sets a password (at least 10 characters); the link is
        spent. Then they sign in as usual."""
        if not isinstance(token, str) or not isinstance(password, str):
            raise ServiceError(400, "invalid_body", "send {\"token\": str, \"password\": str}")
        if not 10 <= len(password) <= 1024:
            raise ServiceError(400, "invalid_field", "'password' must be 10-1024 characters")
        agent = await self.storage.agents.by_invite(api_token_hash(token))
        if agent is None:
            raise ServiceError(401, "invalid_token", "this invitation is unknown, used or "
                               "expired; ask an admin for a new one")
        await self.storage.agents.update(agent.id, password_hash=hash_password(password),
                                         invite_hash=None, invite_expires=None)
        await self.storage.audit.record(f"agent:{agent.id}", "agent.invite_accepted",
                                        agent.email)
        return {"email": agent.email, "signed_up": True}
