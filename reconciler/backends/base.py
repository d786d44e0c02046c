"""The one interface every firewall backend implements.

A backend reads containers (zones, policies, direct tables) into a
`FirewallView` and applies lists of operations in order.  It translates its own errors
into `BackendUnavailable` / `OperationFailed` and reports idempotent cases
(adding what is there, removing what is gone) as `Outcome.UNCHANGED` rather
than as errors, so the transaction engine needs no backend knowledge.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Sequence

from ..errors import BackendError, OperationFailed
from ..model import Item, KnownNames, Op, Outcome, container_kind
from ..view import FirewallView

# `Backend.name_for` of an item no backend is in charge of now (zones while firewalld is away).
NO_BACKEND = "none"


# Why an item is refused where no backend that can hold its kind is in charge,
# by container kind (`Item.container()[0]`): the one text for the router and
# for every backend that meets an item of a kind it does not hold.
NEEDS_BACKEND = {
    "zone": "needs firewalld",
    "policy": "needs firewalld",
    "direct": "needs firewalld or the iptables backend",
    "nft": "needs the nftables backend",
    "permanent": "needs firewalld (--persist permanent)",
    "ipset": "needs firewalld (an nft set works without it)",
}


def kind_refused(item: Item) -> str:
    """`NEEDS_BACKEND`'s text for ``item``."""
    kind = container_kind(item)
    return NEEDS_BACKEND.get(kind, f"no backend handles {kind} items")


class BackendEvent(enum.Enum):
    """Things the firewall tells us; each only ever schedules a reconcile."""

    RELOADED = "reload"  # runtime state was wiped and rebuilt from permanent config
    OWN_RELOAD = "own-reload"  # the same, by fwrecon (`Backend.activate`): its reconcile re-applied already
    APPEARED = "up"  # the firewall service came (back) onto the bus
    VANISHED = "down"  # the firewall service left the bus
    CHANGED = "drift"  # someone changed or removed something


EventCallback = Callable[[BackendEvent], None]
# What firewall names policies may use, asked once per reconcile (`router.Router.known_names`).
NameSource = Callable[[], Awaitable[KnownNames | None]]


class Backend(ABC):
    """observe, apply, refusals, events, close; see module docstring.

    Every method is required: a wrapper or a new backend says what it does
    for each, and none falls back to a default that hides what it lacks."""

    name: str = "backend"

    @abstractmethod
    async def observe(
        self,
        containers: Collection[tuple[str, ...]],
        known: Iterable[Item] | None = None,
        *,
        removable: Collection[Item] | None = None,
    ) -> FirewallView:
        """Read the given containers, one read each, into a view.

        ``known``: every item the caller cares about (desired and owned), the
        only ones a labelling backend maps an ownership tag back to from now
        on (None: those it was told last).  Told at each observe rather than
        learnt for good, so what the backend knows never outgrows what the
        engine wants.

        ``removable``: the owned chains, sets and ipsets a plan may remove
        (None: any the read meets), the only ones whose users
        (`FirewallView.users_of`) it asks about: a backend for which they
        cost reads of their own reads them for these alone.
        """

    @abstractmethod
    async def apply(self, ops: Sequence[Op], seen: FirewallView | None = None) -> list[Outcome]:
        """Apply ``ops`` in their order: one outcome per op.

        Batching is the backend's business (one ``*-restore`` per table, one
        ``nft -f``, one D-Bus call per op).  On failure it raises a
        `BackendError` whose ``done`` holds the outcomes of the ops that took
        effect before it, always a prefix of ``ops`` (none of a batch that
        failed), and an `OperationFailed` names the culprit ``op`` when known.
        A backend never undoes ``done`` itself: the transaction does, in one
        place.  ``seen``: the view the ops were planned on, whose
        `FirewallView.reads` a backend may build a batch on instead of reading
        again (its own writes make a read stale: it drops it, see `in_runs`).
        """

    @abstractmethod
    def read_afresh(self) -> None:
        """Keep nothing read before: the next observe asks the firewall for
        everything.  A backend may keep a read between reconciles while its
        event stream shows nothing changed it (nftables); the periodic resync
        calls this first, so that its repair of drift never rests on events."""

    @abstractmethod
    async def activate(self) -> bool:
        """Bring into force what the writes since the last call left for a step
        of its own, once for all of them (firewalld: the reload that loads the
        ipsets it created); True when that rebuilt the runtime, so everything
        must be observed again."""

    @abstractmethod
    async def refusals(self, items: Collection[Item], *, ask_tools: bool = False) -> dict[Item, str]:
        """The items among ``items`` this backend would refuse, with why.

        Always what it cannot express (a kind it does not hold: `kind_refused`;
        a name its tools reject; a tool not installed), which is cheap and is
        what `apply` and the daemon judge policies by; each item on its own,
        whatever else is asked with it (`RefusalMemo` judges only what an
        edit added).  With ``ask_tools``
        (``check`` and ``plan``) also the tools' own verdict without applying
        anything (``nft -c``); BackendUnavailable when they cannot run here.
        """

    @abstractmethod
    def refusal_key(self) -> Hashable:
        """A value that changes whenever `refusals` may answer differently
        without ``ask_tools`` (a tool installed or removed); answers are kept
        while it stays equal.  Called once per reconcile, so it may look at
        the host."""

    @abstractmethod
    def name_for(self, item: Item) -> str:
        """The name of the backend in charge of ``item`` (for metrics and state),
        or NO_BACKEND: a single backend answers its own name."""

    @abstractmethod
    async def subscribe(self, callback: EventCallback) -> None:
        """Deliver the firewall's events to ``callback`` from now on (a backend
        without change events says so in its docstring: its drift is found by
        the periodic resync)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and processes; the backend is not used again."""


class ServiceBackend(Backend):
    """A backend behind a service that comes and goes on a bus (firewalld):
    what the daemon's connection loop and name validation need besides."""

    @abstractmethod
    async def is_up(self) -> bool:
        """Whether the firewall service is there to talk to now."""

    @abstractmethod
    async def wait_closed(self) -> None:
        """Return when the connection is lost."""

    @abstractmethod
    async def known_names(self) -> KnownNames | None:
        """The zones, policies, services, ... the service knows, to validate
        policies against (None: it cannot tell, check none)."""


async def one_by_one(ops: Sequence[Op], execute: Callable[[Op], Awaitable[Outcome]]) -> list[Outcome]:
    """`Backend.apply` for a backend that writes one op per call (firewalld)."""
    done: list[Outcome] = []
    for op in ops:
        try:
            done.append(await execute(op))
        except BackendError as exc:
            exc.done = (*done, *exc.done)
            if isinstance(exc, OperationFailed) and exc.op is None:
                exc.op = op
            raise
    return done


async def in_runs(
    ops: Sequence[Op],
    key: Callable[[Op], Hashable],
    batch: Callable[[Sequence[Op], FirewallView | None], Awaitable[list[Outcome]]],
    seen: FirewallView | None,
) -> list[Outcome]:
    """`Backend.apply` for a backend that writes a run of consecutive ops with
    one ``key`` in one all-or-nothing ``batch`` (a table's ``*-restore``).

    After a run, ``seen`` no longer stands for the containers it wrote."""
    done: list[Outcome] = []
    for run in consecutive_runs(ops, key):
        try:
            done.extend(await batch(run, seen))
        except BackendError as exc:
            exc.done = (*done, *exc.done)
            raise
        if seen is not None:
            seen = seen.without_reads({op.item.container() for op in run})
    return done


def by_container(op: Op) -> tuple[str, ...]:
    """`in_runs` key of a backend that writes one container per batch."""
    return op.item.container()


def consecutive_runs(ops: Sequence[Op], key: Callable[[Op], Hashable]) -> list[list[Op]]:
    """``ops`` cut where ``key`` changes, order kept."""
    runs: list[list[Op]] = []
    last: Hashable = object()
    for op in ops:
        current = key(op)
        if not runs or current != last:
            runs.append([])
            last = current
        runs[-1].append(op)
    return runs
