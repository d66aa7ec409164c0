"""The error every chat-node service raises for what a client got wrong."""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
