"""The one place that decides which backends are in charge (``--backend``).

* ``firewalld``: zones, firewalld policies and direct rules through firewalld
  over D-Bus (it must be running); nft sections through nftables beside it.
* ``iptables``: direct rules through iptables/ip6tables/ebtables; nft sections
  through nftables; zones and firewalld policies are refused ("needs firewalld").
* ``nftables``: nft sections only; everything else is refused.
* ``auto``: ``firewalld`` when org.fedoraproject.FirewallD1 has an owner on
  the bus, else ``iptables``.  The daemon re-decides whenever firewalld comes
  or goes.

The choice is logged (event ``backend_selected``) and exported as a metric label.
"""

from __future__ import annotations

from typing import Literal

import structlog

from ..errors import BackendUnavailable
from .base import ServiceBackend
from .firewalld import FirewalldBackend
from .iptables import IptablesBackend
from .nftables import NftablesBackend
from .router import Router, routes_for

log = structlog.get_logger(__name__)

BackendMode = Literal["auto", "firewalld", "iptables", "nftables"]
BACKEND_MODES: tuple[str, ...] = ("auto", "firewalld", "iptables", "nftables")
BACKEND_NAMES: tuple[str, ...] = ("firewalld", "iptables", "nftables")
DEFAULT_TIMEOUT = 10.0  # seconds for one D-Bus call or one tool run (``--timeout``)


class BackendSet:
    """The backends one fwrecon process can reach, and the routing in force."""

    def __init__(self, mode: BackendMode, firewalld: ServiceBackend | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``timeout``: for each tool run (the firewalld connection brings its own)."""
        self.mode = mode
        self.firewalld = firewalld
        self.timeout = timeout
        self.iptables = IptablesBackend(timeout=timeout) if mode in ("auto", "firewalld", "iptables") else None
        self.nftables = NftablesBackend(timeout=timeout)

    def router(self, firewalld_up: bool) -> Router | None:
        """The routing for this mode, or None when the mode cannot work now.

        The iptables backend stays reachable under firewalld, so items it held
        before firewalld appeared can be taken out of it.
        """
        if self.mode == "nftables":
            return routes_for(None, None, self.nftables)
        if self.mode == "iptables":
            return routes_for(None, self.iptables, self.nftables)
        if firewalld_up and self.firewalld is not None:
            return routes_for(self.firewalld, self.iptables, self.nftables)
        if self.mode == "auto":
            return routes_for(None, self.iptables, self.nftables)
        return None  # firewalld mode while firewalld is away: wait

    def offline(self) -> Router:
        """What can be checked with the firewall in charge unreachable: nft
        sections, by the nftables backend (``nft -c`` needs no firewalld)."""
        return routes_for(None, None, self.nftables)

    async def close(self) -> None:
        for backend in (self.firewalld, self.iptables, self.nftables):
            if backend is not None:
                await backend.close()


async def connect_firewalld(bus_address: str | None, timeout: float = DEFAULT_TIMEOUT) -> ServiceBackend:
    """A firewalld backend on the bus at ``bus_address`` (the daemon's
    connection loop calls this again whenever the bus comes back)."""
    return await FirewalldBackend.connect(bus_address, timeout=timeout)


async def connect(mode: BackendMode, bus_address: str | None, timeout: float = DEFAULT_TIMEOUT) -> tuple[BackendSet, Router]:
    """Backends and routing for a one-shot command; raises BackendUnavailable.

    ``timeout`` bounds each D-Bus call and each tool run."""
    firewalld = None
    up = False
    if mode in ("auto", "firewalld"):
        try:
            firewalld = await FirewalldBackend.connect(bus_address, timeout=timeout)
            up = await firewalld.is_up()
        except BackendUnavailable:
            if mode == "firewalld":
                raise
    if mode == "firewalld" and not up:
        raise BackendUnavailable("firewalld is not running (org.fedoraproject.FirewallD1 has no owner on the bus)")
    backends = BackendSet(mode, firewalld, timeout=timeout)
    router = backends.router(up)
    assert router is not None
    log.info("backend_selected", mode=mode, backend=router.name, firewalld_up=up)
    return backends, router
