"""firewalld ipsets for `FirewalldBackend`: one read per ipset, the cheapest
correct write for its entries, and the one reload a new ipset needs.

firewalld creates ipsets only in its permanent configuration
(``config.addIPSet``); a reload brings them into the runtime.  So an `Ipset`
is present when both hold it (its definition read from the permanent one),
creating it leaves a reload pending, and `FirewalldBackend.activate` makes
that reload once for every ipset created in a reconcile.  Removing one takes
it out of the permanent configuration; its (by then empty) runtime copy goes
at the next reload, as firewalld has no call to remove it sooner.

Runtime entries: a run of adds into an ipset that holds no entry (just made,
or after a reload) is one ``setEntries`` call (10,000 entries in ~0.7 s), as
is a run that removes every entry it holds (with none); any other change
goes entry by entry (``addEntry``/``removeEntry``), never
as a flush and refill of a populated set, which would leave it empty for a
moment.  Whether the ipset is empty comes from the plan's read
(`FirewallView.reads`), or from a fresh ``getEntries`` once a write made that
stale.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, BackendUnavailable, OperationFailed
from ..ipsets import canonical_entry, canonical_options, default_family, options_dict
from ..model import Ipset, IpsetEntry, Item, Op, Outcome, Permanent, RichRule, Source, runtime_of
from ..view import FirewallView
from . import firewalld_settings as fs

if TYPE_CHECKING:
    from .firewalld import FirewalldBackend

IFACE_IPSET = fs.BUS_NAME + ".ipset"
IFACE_CONFIG_IPSET = fs.IFACE_CONFIG + ".ipset"
SETTINGS_SIGNATURE = "(ssssa{ss}as)"  # version, short, description, type, options, entries
MISSING_IPSET_CODES = frozenset({"INVALID_IPSET"})
BULK_SECONDS_PER_ENTRY = 0.001  # added to the call timeout of a bulk write, per entry
IN_USE_CODE = "IN_USE"  # (fwrecon's own code: firewalld removes an ipset whatever uses it)
# How firewalld prints a rich rule's ipset (``source ipset="NAME"``, ``destination not ipset="NAME"``).
_RICH_RULE_IPSET = re.compile(r'\bipset="([^"]*)"')


def ipset_of(settings: list[Any], name: str, what: str) -> tuple[Ipset, list[str]]:
    """The `Ipset` an ipset's settings describe, and its entries."""
    try:
        _version, _short, _description, ipset_type, options, entries = settings
        if not isinstance(ipset_type, str) or not isinstance(options, dict) or not isinstance(entries, list):
            raise TypeError
    except (TypeError, ValueError):
        raise fs.MalformedReply(f"firewalld answered {what} for ipset {name!r} with {fs.short(settings)}") from None
    family = options.get("family", default_family(ipset_type))
    # One entry however it was written (``192.0.2.1,443`` is fwrecon's
    # ``192.0.2.1,tcp:443``): firewalld compares the text, but both are one
    # element in the kernel, so another tool's spelling of an entry a policy
    # wants is that entry, held by them.  What fwrecon cannot read stays as it is.
    return Ipset(name, ipset_type, family, canonical_options(options)), [_as_read(ipset_type, family, e) for e in entries]


def _as_read(ipset_type: str, family: str, entry: Any) -> str:
    try:
        return canonical_entry(ipset_type, family, entry)
    except (ValueError, AttributeError):
        return str(entry)


class IpsetLayer:
    """Reads and writes of ipsets (containers ``("ipset", NAME)``)."""

    def __init__(self, backend: FirewalldBackend) -> None:
        self.fw = backend
        # Ipsets created (or found only in the permanent configuration) since the
        # last reload; one removed again (a rollback) needs none.
        self.to_load: set[str] = set()

    # -- read ------------------------------------------------------------------

    async def read(self, name: str) -> tuple[list[Item], int | None]:
        """The ipset (when both layers hold it), its runtime entries and the
        `Permanent` copies of its permanent ones; and how many runtime entries
        it holds (None: not in the runtime).  Two reads, one per layer."""
        items: list[Item] = []
        found = await self.permanent(name)
        if found is not None:
            items += [Permanent(IpsetEntry(name, entry)) for entry in found[2]]
        try:
            (settings,) = await self.fw.call(IFACE_IPSET, "getIPSetSettings", "s", [name], returns=SETTINGS_SIGNATURE)
        except OperationFailed as exc:
            if exc.code in MISSING_IPSET_CODES:
                return items, None  # (a permanent-only one is not loaded yet: not present)
            raise
        _, entries = ipset_of(settings, name, "getIPSetSettings")
        items += [IpsetEntry(name, entry) for entry in entries]
        if found is not None:  # (runtime only: gone at the next reload, not one to use)
            items.append(found[1])
        return items, len(entries)

    async def permanent(self, name: str) -> tuple[str, Ipset, list[str]] | None:
        """The ipset's object path, definition and entries in the permanent
        configuration (None: it has no ipset of that name)."""
        try:
            (path,) = await self.fw.call(fs.IFACE_CONFIG, "getIPSetByName", "s", [name], returns="o", path=fs.CONFIG_PATH)
        except OperationFailed as exc:
            if exc.code in MISSING_IPSET_CODES:
                return None
            raise
        (settings,) = await self.fw.call(IFACE_CONFIG_IPSET, "getSettings", returns=SETTINGS_SIGNATURE, path=path)
        ipset, entries = ipset_of(list(settings), name, "getSettings")
        return str(path), ipset, entries

    async def users(self, ipsets: Collection[Ipset], read: Collection[tuple[str, ...]]) -> dict[Item, tuple[Item | str, ...]]:
        """Per ipset, the zone sources and rich rules that use it, in every zone
        and policy of both layers: one read of each (in parallel).  A user in a
        container the view holds (``read``) is the item itself, in use while
        present (the plan may remove it first); one elsewhere is its text.

        firewalld removes an ipset whatever uses it, and then fails to load
        those zones at the next reload: this is what keeps fwrecon from doing that."""
        wanted = {ipset.name: ipset for ipset in ipsets}
        found: dict[Item, list[Item | str]] = {}
        items, unreadable = await self._referrers()
        for ipset in wanted.values():  # (what cannot be read may use it: it stays)
            found.setdefault(ipset, []).extend(unreadable)
        for item in items:
            inner = runtime_of(item)
            if isinstance(inner, Source):
                names = [inner.source.removeprefix("ipset:")] if inner.source.startswith("ipset:") else []
            elif isinstance(inner, RichRule):
                names = _RICH_RULE_IPSET.findall(inner.rule)
            else:
                continue
            for name in names:
                if name in wanted:
                    found.setdefault(wanted[name], []).append(item if item.container() in read else item.describe())
        return {ipset: tuple(users) for ipset, users in found.items() if users}

    async def _referrers(self) -> tuple[list[Item], list[str]]:
        """The items of every zone and policy, runtime and permanent
        (`Permanent` copies), and the ones firewalld answered garbage for:
        another tool's odd zone must not stop every reconcile."""
        names = await fs.gather_all(
            self.fw.call(fs.IFACE_ZONE, "getZones", returns="as"),
            self.fw.call(fs.IFACE_POLICY, "getPolicies", returns="as"),
            self.fw.call(fs.IFACE_CONFIG, "getZoneNames", returns="as", path=fs.CONFIG_PATH),
            self.fw.call(fs.IFACE_CONFIG, "getPolicyNames", returns="as", path=fs.CONFIG_PATH),
        )
        (zones,), (policies,), (permanent_zones,), (permanent_policies,) = names
        runtime = [("zone", str(z)) for z in zones] + [("policy", str(p)) for p in policies]
        permanent = [("zone", str(z)) for z in permanent_zones] + [("policy", str(p)) for p in permanent_policies]
        reads = await fs.gather_all(
            *(self._scope(container, permanent=False) for container in runtime),
            *(self._scope(container, permanent=True) for container in permanent),
        )
        items = [item for read in reads if not isinstance(read, str) for item in read]
        return items, [read for read in reads if isinstance(read, str)]

    async def _scope(self, container: tuple[str, ...], *, permanent: bool) -> list[Item] | str:
        """One zone's or policy's items, or why they cannot be read."""
        try:
            if permanent:
                return await self.fw.permanent.read(container)
            return await self.fw.read_unit(container) or []
        except OperationFailed as exc:
            if exc.code in fs.MISSING_CONTAINER_CODES:
                return []  # (removed between the listing and the read)
            raise
        except fs.MalformedReply as exc:
            return f"{'permanent ' if permanent else ''}{container[0]} {container[1]} (unreadable: {exc})"

    # -- write -----------------------------------------------------------------

    async def write_ipset(self, op: Op) -> Outcome:
        """Create (in the permanent configuration) or remove an ipset."""
        ipset = op.item
        assert isinstance(ipset, Ipset)
        found = await self.permanent(ipset.name)
        if op.action == "remove":
            if found is None:
                return Outcome.UNCHANGED
            users = (await self.users([found[1]], ())).get(found[1])
            if users:  # (one came since the plan's read; our own users were removed before it)
                shown = ", ".join(str(user) for user in users[:5])
                raise OperationFailed(f"{ipset.describe()} is still used by {shown}; not removed", IN_USE_CODE, op)
            self.fw.writes += 1
            await self.fw.call(IFACE_CONFIG_IPSET, "remove", path=found[0])
            self.to_load.discard(ipset.name)
            return Outcome.APPLIED
        if found is not None:
            if found[1] != ipset:
                raise OperationFailed(f"firewalld already has {found[1].describe()}, not {ipset.describe()}", "NAME_CONFLICT")
            self.to_load.add(ipset.name)  # defined already but not in the runtime (that is why it is added)
            return Outcome.UNCHANGED
        settings = ["", "", "", ipset.type, options_dict(ipset.family, ipset.options), []]
        self.fw.writes += 1
        await self.fw.call(fs.IFACE_CONFIG, "addIPSet", "s" + SETTINGS_SIGNATURE, [ipset.name, settings], path=fs.CONFIG_PATH)
        self.to_load.add(ipset.name)
        return Outcome.APPLIED

    async def write_entries(self, run: Sequence[Op], seen: FirewallView | None) -> list[Outcome]:
        """A run of runtime entry ops on one ipset: bulk into an empty one, else entry by entry."""
        name = _entry(run[0]).ipset
        if all(op.action == "add" for op in run) and await self._is_empty(name, seen):
            return await self._fill(name, run)
        if all(op.action == "remove" for op in run) and _listed(name, seen) == len(run):
            cleared = await self._clear(name, run)
            if cleared is not None:
                return cleared
        outcomes: list[Outcome] = []
        for op in run:
            try:
                self.fw.writes += 1
                await self.fw.call(IFACE_IPSET, f"{op.action}Entry", "ss", [name, _entry(op).entry])
                outcomes.append(Outcome.APPLIED)
            except BackendError as exc:
                if isinstance(exc, OperationFailed) and exc.code == ("ALREADY_ENABLED" if op.action == "add" else "NOT_ENABLED"):
                    outcomes.append(Outcome.UNCHANGED)
                    continue
                if isinstance(exc, OperationFailed):
                    exc.op = op
                exc.done = tuple(outcomes)
                raise
        return outcomes

    async def _fill(self, name: str, run: Sequence[Op]) -> list[Outcome]:
        """One ``setEntries`` into an empty ipset."""
        entries = list(dict.fromkeys(_entry(op).entry for op in run))
        await self._set_entries(name, entries, run[0], "setEntries")
        return [Outcome.APPLIED] * len(run)

    async def _clear(self, name: str, run: Sequence[Op]) -> list[Outcome] | None:
        """One ``setEntries`` with no entry, when the run removes every entry
        the runtime ipset holds (read again right before): firewalld 1.3.3
        takes seconds for each ``removeEntry`` from a large ipset, so taking
        100,000 out one by one would keep it busy for hours.  Emptying it
        opens no window: empty is where the run ends.  None: it holds others.
        (An entry someone adds between that read and the call is lost with
        the rest, as in the bulk fill: one D-Bus round trip.)"""
        (entries,) = await self.fw.call(IFACE_IPSET, "getEntries", "s", [name], returns="as")
        removing = {_entry(op).entry for op in run}
        if not set(entries) <= removing:
            return None  # (someone else's came since the plan: one by one, around it)
        await self._set_entries(name, [], run[0], "emptying with setEntries", len(entries))
        present = set(entries)
        return [Outcome.APPLIED if _entry(op).entry in present else Outcome.UNCHANGED for op in run]

    async def _set_entries(self, name: str, entries: list[str], op: Op, what: str, size: int | None = None) -> None:
        """``setEntries``, with time for firewalld to go through ``size`` entries
        (default: ``entries``).  firewalld checks the entries before it changes
        anything (a refusal: nothing landed); a failure after that leaves
        unknown what did, which is said as such (the caller's intent, owning
        them all, is then kept)."""
        self.fw.writes += 1
        # (firewalld 1.3.3 checks every entry against the others: 100,000 take ~40 s)
        timeout = self.fw.timeout + (len(entries) if size is None else size) * BULK_SECONDS_PER_ENTRY
        try:
            await self.fw.call(IFACE_IPSET, "setEntries", "sas", [name, entries], timeout=timeout)
        except OperationFailed as exc:
            if exc.code in ("COMMAND_FAILED", "UNKNOWN_ERROR"):
                raise BackendUnavailable(f"{what} of ipset {name!r} failed midway, what landed is unknown: {exc}") from exc
            exc.op = op
            raise

    async def _is_empty(self, name: str, seen: FirewallView | None) -> bool:
        """Whether the runtime ipset holds no entry: a populated one per the
        plan's read is believed; an empty one is read again right before the
        bulk write, which replaces the whole list (the plan's read may be
        long past, and a reload meanwhile may have put permanent entries in)."""
        if _listed(name, seen):
            return False
        (entries,) = await self.fw.call(IFACE_IPSET, "getEntries", "s", [name], returns="as")
        return not entries


def _listed(name: str, seen: FirewallView | None) -> int | None:
    """How many runtime entries the plan's read found in the ipset (None: not known)."""
    read = seen.reads.get(("ipset", name)) if seen is not None else None
    return read if isinstance(read, int) else None


def _entry(op: Op) -> IpsetEntry:
    item = op.item
    if not isinstance(item, IpsetEntry):
        raise TypeError(f"not an ipset entry: {item!r}")
    return item
