"""A stand-in for a module's structlog logger, for tests that assert what was logged."""

from __future__ import annotations


class LogRecorder:
    """Keeps (level, event, fields) of every call: ``monkeypatch.setattr(module, "log", recorder)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):  # type: ignore[no-untyped-def]
        return lambda event, **fields: self.events.append((level, event, fields))
