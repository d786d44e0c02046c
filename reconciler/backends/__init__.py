"""Firewall backends behind one interface (see base.py)."""

from .base import Backend, BackendEvent, EventCallback

__all__ = ["Backend", "BackendEvent", "EventCallback", "KnownNames", "Outcome"]
