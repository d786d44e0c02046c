"""Exceptions, grouped by what the caller should do about them.

    FwreconError
    ├── PolicyError        bad input: skip that policy until its file changes
    ├── StateError         the ownership state file is unusable: stop, never reset
    └── BackendError       talking to the firewall failed
        ├── BackendUnavailable   firewall (or its bus) is away: retry with backoff
        └── OperationFailed      the firewall refused one operation: roll back
                                 the transaction; `code` is firewalld's error
                                 code (e.g. INVALID_SERVICE) when it gave one

Lower layers' errors (D-Bus replies, OSError) are translated at the backend
boundary and re-raised ``from`` the original.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Outcome


class FwreconError(Exception):
    """Base of every error fwrecon raises on purpose."""


class PolicyError(FwreconError):
    """One problem in one policy file, located by file and key path."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        return where + self.message


class StateError(FwreconError):
    """The state file cannot be read or written; ownership would be lost."""


class BackendError(FwreconError):
    """Base of firewall-side failures.

    ``done``: the outcomes of the ops of the failed `Backend.apply` call that
    took effect before the failure, a prefix of its ops (set by the backend;
    empty for a batch, which lands all or nothing).  The transaction undoes them.
    """

    done: tuple[Outcome, ...] = ()


class BackendUnavailable(BackendError):
    """The firewall cannot be reached now (bus gone, service not running, timeout)."""


class OperationFailed(BackendError):
    """The firewall refused one operation (``op``, when a batch knows which)."""

    def __init__(self, message: str, code: str | None = None, op: object | None = None) -> None:
        self.code = code
        self.op = op
        super().__init__(message)
