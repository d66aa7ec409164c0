"""Errors shared by every backend: something we depend on is unavailable right now.

Callers treat all of them alike: nothing was done, try again later. Chat nodes answer with a
``try_again`` / ``busy`` frame (never a false ack); routers stop acknowledging so the broker keeps
the messages.
"""


class Unavailable(RuntimeError):
    """A backend (broker, session store, database) cannot be used right now."""


class StorageUnavailable(Unavailable):
    """The history database is down, or its circuit breaker is open."""


class StoreUnavailable(Unavailable):
    """The session store (Redis) is down, or its circuit breaker is open."""
