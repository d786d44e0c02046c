"""Firewall backends behind one interface (see base.py)."""

from .base import Backend, KnownNames, Outcome

__all__ = ["Backend", "KnownNames", "Outcome"]
