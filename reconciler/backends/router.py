"""One backend made of several: each kind of container goes to the backend
that holds it.

With firewalld, zones, firewalld policies and direct rules go to firewalld and
nft sections to the nftables backend beside it (firewalld leaves foreign
tables alone).  Without firewalld, direct rules go to iptables/ip6tables/
ebtables and zones are refused with "needs firewalld".  The engine sees one
`Backend`; the router also knows every backend it can reach by name, so the
engine can take an item out of the backend that held it before a switch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence

import structlog

from ..errors import BackendError
from ..model import PERMANENT, Item, KnownNames, Op, Outcome, container_kind
from ..view import HOLDERS, FirewallView
from .base import NO_BACKEND, Backend, EventCallback, ServiceBackend, consecutive_runs, kind_refused

log = structlog.get_logger(__name__)


class Router(Backend):
    """Routes by ``item.container()[0]``; see module docstring."""

    def __init__(
        self,
        routes: Mapping[str, Backend],
        reachable: Iterable[Backend] = (),
    ) -> None:
        self.routes = dict(routes)
        self.backends: list[Backend] = []
        for backend in [*self.routes.values(), *reachable]:
            if all(backend is not known for known in self.backends):
                self.backends.append(backend)
        primary = self.routes.get("direct") or self.routes.get("zone") or self.routes.get("nft")
        self.name = primary.name if primary else NO_BACKEND

    def backend_for(self, item: Item) -> Backend | None:
        return self.routes.get(container_kind(item))

    def by_name(self, name: str) -> Backend | None:
        """A reachable backend by name (to evict items it held before a switch)."""
        return next((b for b in self.backends if b.name == name), None)

    def _route(self, item: Item) -> Backend:
        backend = self.backend_for(item)
        if backend is None:
            raise ValueError(f"no backend for {item.describe()}: {kind_refused(item)}")
        return backend

    async def refusals(self, items: Collection[Item], *, ask_tools: bool = False) -> dict[Item, str]:
        """Each item judged by the backend in charge of it; one of a kind no
        backend in charge holds is refused with `kind_refused`."""
        found: dict[Item, str] = {}
        groups: dict[int, tuple[Backend, list[Item]]] = {}
        for item in items:
            backend = self.backend_for(item)
            if backend is None:
                found[item] = kind_refused(item)
            else:
                groups.setdefault(id(backend), (backend, []))[1].append(item)
        for backend, wanted in groups.values():
            found.update(await backend.refusals(wanted, ask_tools=ask_tools))
        return found

    def read_afresh(self) -> None:
        """Every backend's."""
        for backend in self.backends:
            backend.read_afresh()

    async def activate(self) -> bool:
        """Every backend's (each brings its own writes into force)."""
        results = [await backend.activate() for backend in self.backends]
        return any(results)

    def refusal_key(self) -> Hashable:
        return tuple(backend.refusal_key() for backend in self.backends)

    def name_for(self, item: Item) -> str:
        backend = self.backend_for(item)
        return backend.name_for(item) if backend else NO_BACKEND

    async def observe(
        self,
        containers: Collection[tuple[str, ...]],
        known: Iterable[Item] | None = None,
        *,
        removable: Collection[Item] | None = None,
    ) -> FirewallView:
        """Each container from the backend in charge of it; ``known`` goes to every
        reachable backend (one no longer in charge may still hold items to move)."""
        known = list(known) if known is not None else None
        groups: dict[int, tuple[Backend, list[tuple[str, ...]]]] = (
            {id(b): (b, []) for b in self.backends} if known is not None else {}
        )
        skipped = []
        for container in containers:
            backend = self.routes.get(container[0])
            if backend is None:
                skipped.append(container)  # nothing to read or write: its items wait
                continue
            groups.setdefault(id(backend), (backend, []))[1].append(container)
        views = await asyncio.gather(
            *(backend.observe(wanted, known, removable=removable) for backend, wanted in groups.values())
        )
        items: list[Item] = []
        missing: list[tuple[str, ...]] = []
        users: dict[Item, tuple[Item | str, ...]] = {}
        reads: dict[tuple[str, ...], object] = {}
        for view in views:
            items.extend(view.items())
            missing.extend(view.missing)
            users.update(view.users)
            reads.update(view.reads)
            skipped.extend(view.unreachable)  # e.g. a family whose tools are not installed
        return FirewallView(items, containers, missing, users, unreachable=skipped, reads=reads)

    async def apply(self, ops: Sequence[Op], seen: FirewallView | None = None) -> list[Outcome]:
        """Each run of consecutive ops with one target to that backend, in order."""
        done: list[Outcome] = []
        for run in consecutive_runs(ops, self._target):
            try:
                done.extend(await self._apply_run(run, seen))
            except BackendError as exc:
                exc.done = (*done, *exc.done)
                raise
            if seen is not None:
                seen = seen.without_reads({op.item.container() for op in run})
        return done

    def _target(self, op: Op) -> Hashable:
        return ("via", op.via) if op.via is not None else ("route", id(self.backend_for(op.item)))

    async def _apply_run(self, run: Sequence[Op], seen: FirewallView | None) -> list[Outcome]:
        via = run[0].via
        if via is None:
            return await self._route(run[0].item).apply(run, seen)
        # Out of a backend no longer in charge (a switch): one that is not
        # reachable (firewalld stopped), or that cannot hold the item now (its
        # tools uninstalled), holds nothing of it to take out.
        source = self.by_name(via)
        if source is None:
            return [Outcome.UNCHANGED] * len(run)
        refused = await source.refusals([op.item for op in run])
        done: list[Outcome] = []
        for op in run:  # one by one: a move is rare, and each is its own
            if op.item in refused or await _kept_for_others(source, op):
                done.append(Outcome.UNCHANGED)
                continue
            try:
                done.extend(await source.apply([op._replace(via=None)]))
            except BackendError as exc:
                exc.done = (*done, *exc.done)
                raise
        return done

    async def known_names(self) -> KnownNames | None:
        """What the service in charge of zones knows (firewalld), for
        validating names; None when no such service is in charge."""
        zone_backend = self.routes.get("zone")
        return await zone_backend.known_names() if isinstance(zone_backend, ServiceBackend) else None

    async def subscribe(self, callback: EventCallback) -> None:
        for backend in self.backends:
            await backend.subscribe(callback)

    async def close(self) -> None:
        """The backends are not the router's: whoever made them closes them (`select.BackendSet`)."""


async def _kept_for_others(source: Backend, op: Op) -> bool:
    """A chain or set to take out of ``source`` that still holds or is used by
    something fwrecon does not own there stays (`FirewallView.users_of`)."""
    if op.action != "remove" or not isinstance(op.item, HOLDERS):
        return False
    users = (await source.observe({op.item.container()})).users_of(op.item)
    if users:
        log.warning(
            "chain_kept", chain=op.item.describe(), backend=source.name, reason="it holds or is used by what fwrecon does not own"
        )
    return bool(users)


def routes_for(firewalld: Backend | None, iptables: Backend | None, nftables: Backend | None) -> Router:
    """The routing fwrecon uses with these backends in charge."""
    routes: dict[str, Backend] = {}
    if firewalld is not None:
        routes.update(zone=firewalld, policy=firewalld, direct=firewalld)
        routes[PERMANENT] = firewalld  # the permanent copies (--persist permanent)
        routes["ipset"] = firewalld
    elif iptables is not None:
        routes["direct"] = iptables
    if nftables is not None:
        routes["nft"] = nftables
    reachable = [b for b in (firewalld, iptables, nftables) if b is not None]
    return Router(routes, reachable)
