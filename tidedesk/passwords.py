"""Which passwords are refused: too short, or among the most common ones breaches show.

The list is zxcvbn's bundled top 30 000 of leaked passwords: no network, so it works on an
air-gapped install (the online Pwned Passwords check is left open: docs/security.md)."""

from __future__ import annotations

import functools

MIN_LENGTH = 8


@functools.cache
def _common() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def password_problem(password: str) -> str | None:
    """Why ``password`` is refused (a sentence for the person choosing it), or None."""
    if len(password) < MIN_LENGTH:
        return f"use at least {MIN_LENGTH} characters"
    if password.lower() in _common():
        return ("this password is among the most common ones in breached-password lists; "
                "choose another (a few unrelated words make a good one)")
    return None
