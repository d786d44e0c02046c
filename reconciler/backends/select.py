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

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from ..errors import BackendUnavailable
from .base import EventCallback, ServiceBackend
from .firewalld import FirewalldBackend
from .iptables import IptablesBackend
from .nftables import NftablesBackend
from .router import Router, routes_for

log = structlog.get_logger(__name__)

BackendMode = Literal["auto", "firewalld", "iptables", "nftables"]
BACKEND_MODES: tuple[str, ...] = ("auto", "firewalld", "iptables", "nftables")
BACKEND_NAMES: tuple[str, ...] = ("firewalld", "iptables", "nftables")
DEFAULT_TIMEOUT = 10.0  # seconds for one D-Bus call or one tool run (``--timeout``)
# How the connection loop reaches firewalld (the daemon's tests pass their own).
Connect = Callable[[str | None], Awaitable[ServiceBackend]]


class BackendSet:
    """The backends one fwrecon process can reach, and the routing in force."""

    def __init__(self, mode: BackendMode, firewalld: ServiceBackend | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``timeout``: for each tool run (the firewalld connection brings its own)."""
        self.mode = mode
        self.firewalld = firewalld
        self.timeout = timeout
        self.iptables = IptablesBackend(timeout=timeout) if mode in ("auto", "firewalld", "iptables") else None
        self.nftables = NftablesBackend(timeout=timeout)
        self.firewalld_up = False
        self.in_charge: Router | None = None  # the routing in force (`route`); None while the mode cannot work

    @property
    def uses_firewalld(self) -> bool:
        """The mode talks to firewalld when it is there (so a bus connection is kept)."""
        return self.mode in ("auto", "firewalld")

    def route(self, firewalld_up: bool) -> bool:
        """Put the routing for the mode and firewalld's presence in charge;
        True when that changed which backend is in charge (logged once, as
        ``backend_selected``)."""
        self.firewalld_up = firewalld_up
        previous = self.in_charge.name if self.in_charge else None
        self.in_charge = self.router(firewalld_up)
        current = self.in_charge.name if self.in_charge else None
        if current == previous:
            return False
        log.info("backend_selected", mode=self.mode, backend=current, firewalld_up=firewalld_up)
        return True

    async def keep_connected(
        self,
        connect: Connect,
        bus_address: str | None,
        *,
        backoff: tuple[float, float],
        on_event: EventCallback,
        on_presence: Callable[[bool, bool], None],
    ) -> None:
        """The firewalld connection loop, for the life of a daemon: one bus
        connection, reconnected with backoff (``backoff``: first and longest
        wait, seconds) when the bus goes away or cannot be reached.

        Firewalld's events reach ``on_event``.  ``on_presence(up, back)`` is
        called after each connection attempt and loss with whether firewalld
        is there now, ``back`` being True when it is there on a connection
        made after an earlier one (the daemon reconciles then: what firewalld
        holds may have changed while the bus was away).  Runs until cancelled.
        """
        delay, longest = backoff
        reported = False  # this outage was logged at info/warning already
        connected_before = False
        while True:
            try:
                firewalld = await connect(bus_address)
                await firewalld.subscribe(on_event)
                up = await firewalld.is_up()
            except BackendUnavailable as exc:
                on_presence(False, False)
                # In auto mode a host without a system bus (a minimal server) is
                # normal: say it once, not every 30 s; firewalld mode cannot work.
                if self.mode == "firewalld":
                    log.warning("bus_unavailable", error=str(exc), retry_in=delay)
                else:
                    (log.debug if reported else log.info)(
                        "bus_unavailable",
                        error=str(exc),
                        retry_in=delay,
                        hint="iptables/nftables in charge until firewalld appears",
                    )
                reported = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
                continue
            delay, reported = backoff[0], False
            self.firewalld = firewalld
            log.info("bus_connected", firewalld_up=up)
            on_presence(up, up and connected_before)
            connected_before = True
            if not up:  # (in auto mode a host without firewalld is a normal one)
                (log.warning if self.mode == "firewalld" else log.info)(
                    "firewalld_not_running", hint="waiting for it to appear on the bus"
                )
            try:
                await firewalld.wait_closed()
            except Exception as exc:  # dbus-fast re-raises the error that closed the bus
                log.warning("bus_disconnected", error=str(exc))
            else:
                log.warning("bus_disconnected")
            await firewalld.close()
            self.firewalld = None
            on_presence(False, False)

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
    backends.route(up)
    assert backends.in_charge is not None
    return backends, backends.in_charge
