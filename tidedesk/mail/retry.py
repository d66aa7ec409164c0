"""When a mail that failed is tried again (pure; no I/O).

The delay doubles from ``base_s`` up to ``cap_s``; after ``max_attempts`` the mail is given up
(kept in the outbox as ``dead`` with its last error, for an operator to see). With the defaults a
mail is tried for about a day: a mail server down over a weekend night loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

# An agent reply to an absent visitor waits this long before its mail is built, so replies
# written in a burst share one mail; with a sender polling every few seconds the mail leaves
# well within the two minutes docs/protocol.md promises.
REPLY_MAIL_DELAY_SECS = 60.0

# First retry after 30 s (a restart of the mail server), then 1, 2, 4 ... min, at most 1 h
# apart; 30 attempts span about a day.
RETRY_BASE_SECS = 30.0
RETRY_CAP_SECS = 3600.0
MAX_ATTEMPTS = 30


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = RETRY_BASE_SECS
    cap_s: float = RETRY_CAP_SECS
    max_attempts: int = MAX_ATTEMPTS

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure (1 = the first)."""
        if attempts < 1:
            raise ValueError("attempts counts failures, starting at 1")
        return float(min(self.cap_s, self.base_s * 2.0 ** min(attempts - 1, 40)))

    def next_try(self, attempts: int, now: float) -> float | None:
        """When to try again after ``attempts`` failures, or None: give up."""
        if attempts >= self.max_attempts:
            return None
        return now + self.delay(attempts)
