"""firewalld's permanent configuration: the layer that a reload, a restart or
a boot puts back by itself (``--persist permanent``).

firewalld writes a zone's file on every permanent change, so one call per item
costs 9 ms for a port and 23 ms for a rich rule (measured on firewalld 1.3.3
with 300 items), more than the runtime call it doubles.  A whole container
(a zone, a policy, the direct configuration) takes one call instead
(``update2`` / ``update``: 300 ports in 12 ms), which writes the settings keys
it names.  That call replaces those keys' lists, so to never lose a
concurrent change by an admin or another tool, each write is built on a read
made right before it (not on the plan's read, which may be seconds old), and
only the keys fwrecon changes are sent.  The window left is the one round
trip between that read and the write; firewalld's ``Updated`` signals show
whether anyone changed the container inside it, and fwrecon says so
(``permanent_change_raced``) rather than pretend it cannot happen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from dbus_fast import Message, MessageType, Variant

from ..errors import OperationFailed
from ..model import DirectChain, DirectRule, IpsetEntry, Item, Op, Outcome, Permanent, Scope, ScopedItem
from . import firewalld_ipsets as fi
from . import firewalld_settings as fs

if TYPE_CHECKING:
    from .firewalld import FirewalldBackend

log = structlog.get_logger(__name__)

CONFIG_PATH = fs.CONFIG_PATH
IFACE_CONFIG = fs.IFACE_CONFIG
IFACE_CONFIG_ZONE = IFACE_CONFIG + ".zone"
IFACE_CONFIG_POLICY = IFACE_CONFIG + ".policy"
IFACE_CONFIG_DIRECT = IFACE_CONFIG + ".direct"
CONFIG_INTERFACES = (IFACE_CONFIG_ZONE, IFACE_CONFIG_POLICY, IFACE_CONFIG_DIRECT, fi.IFACE_CONFIG_IPSET)
DIRECT_SIGNATURE = "(a(sss)a(sssias)a(sas))"  # chains, rules, passthroughs

# container kind -> (lookup by name, settings interface, read, write)
_OBJECTS = {
    "zone": ("getZoneByName", IFACE_CONFIG_ZONE, "getSettings2", "update2"),
    "policy": ("getPolicyByName", IFACE_CONFIG_POLICY, "getSettings", "update"),
}


class PermanentLayer:
    """Reads and writes of the permanent configuration for `FirewalldBackend`
    (containers here are the runtime ones: ``("zone", NAME)``, ``("direct",)``)."""

    def __init__(self, backend: FirewalldBackend) -> None:
        self.fw = backend
        self.raced = 0  # writes that found someone else's change between their read and them
        self._updates: Counter[str] = Counter()  # firewalld's Updated signals seen, by object path
        self._watching = False

    # -- read ------------------------------------------------------------------

    async def read(self, container: tuple[str, ...]) -> list[Item]:
        """The permanent copies in one container (OperationFailed INVALID_ZONE/POLICY if it is unknown)."""
        if container == ("direct",):
            chains, rules, _ = await self._direct_settings()
            items: list[Item] = [DirectChain(*c) for c in chains]
            items += [DirectRule(r[0], r[1], r[2], int(r[3]), tuple(r[4])) for r in rules]
        else:
            scope = Scope(container[0], container[1])  # type: ignore[arg-type]  # zone or policy, by the caller
            _, settings = await self._scope_settings(scope)
            items = fs.items_from_settings(scope, settings, f"permanent {_OBJECTS[scope.kind][2]}")
        return [Permanent(item) for item in items]

    async def _scope_settings(self, scope: Scope) -> tuple[str, dict[str, Variant]]:
        lookup, interface, get, _ = _OBJECTS[scope.kind]
        (path,) = await self.fw.call(IFACE_CONFIG, lookup, "s", [scope.name], returns="o", path=CONFIG_PATH)
        (settings,) = await self.fw.call(interface, get, returns="a{sv}", path=path)
        return path, settings

    async def _direct_settings(self) -> tuple[list[Any], list[Any], list[Any]]:
        (settings,) = await self.fw.call(IFACE_CONFIG_DIRECT, "getSettings", returns=DIRECT_SIGNATURE, path=CONFIG_PATH)
        chains, rules, passthroughs = settings
        return chains, rules, passthroughs

    # -- write -----------------------------------------------------------------

    async def write(self, run: Sequence[Op]) -> list[Outcome]:
        """Apply a run of ops on copies in one container with one write call
        (none when nothing changes): all or nothing, as firewalld checks the
        whole container before it saves it."""
        await self._watch()
        first = run[0].item
        assert isinstance(first, Permanent)
        if isinstance(first.item, ScopedItem):
            return await self._write_scope(first.item.scope, run)
        if isinstance(first.item, IpsetEntry):
            return await self._write_ipset(first.item.ipset, run)
        return await self._write_direct(run)

    async def _write_ipset(self, name: str, run: Sequence[Op]) -> list[Outcome]:
        """An ipset's permanent entries: one ``setEntries`` on a fresh read."""
        found = await self.fw.ipsets.permanent(name)
        if found is None:
            raise OperationFailed(f"ipset {name!r} is not in firewalld's permanent configuration", "INVALID_IPSET")
        path, _, entries = found
        seen = self._updates[path]
        outcomes = []
        for op in run:
            entry = _inner(op)
            assert isinstance(entry, IpsetEntry)
            outcomes.append(_toggle(entries, entry.entry, op))
        if Outcome.APPLIED in outcomes:
            await self._send(
                fi.IFACE_CONFIG_IPSET, "setEntries", "as", [entries], path, seen, f"ipset {name} (permanent)",
                timeout=self.fw.timeout + len(entries) * fi.BULK_SECONDS_PER_ENTRY,
            )  # fmt: skip
        return outcomes

    async def _write_scope(self, scope: Scope, run: Sequence[Op]) -> list[Outcome]:
        path, settings = await self._scope_settings(scope)
        seen = self._updates[path]
        changed: dict[str, Any] = {}  # settings key -> its new value
        outcomes = []
        for op in run:
            item = _inner(op)
            assert isinstance(item, ScopedItem)
            key = fs.settings_key(item)
            if isinstance(item, fs.SWITCH_KINDS):
                current = changed.get(key, bool(fs.settings_value(scope, settings, key, "permanent settings")))
                wanted = op.action == "add"
                outcomes.append(Outcome.UNCHANGED if current == wanted else Outcome.APPLIED)
                changed[key] = wanted
                continue
            if key not in changed:
                present = fs.settings_value(scope, settings, key, "permanent settings") or []
                changed[key] = [tuple(v) if isinstance(v, list) else v for v in present]
            outcomes.append(_toggle(changed[key], fs.settings_entry(item), op))
        if Outcome.APPLIED in outcomes:
            body = {
                fs.wire_key(scope, key): Variant(fs.settings_signature(key), fs.plain(value)) for key, value in changed.items()
            }
            _, interface, _, put = _OBJECTS[scope.kind]
            await self._send(interface, put, "a{sv}", [body], path, seen, f"{scope} (permanent)")
        return outcomes

    async def _write_direct(self, run: Sequence[Op]) -> list[Outcome]:
        chains_read, rules_read, passthroughs = await self._direct_settings()
        seen = self._updates[CONFIG_PATH]
        chains: list[tuple[Any, ...]] = [tuple(c) for c in chains_read]
        rules: list[tuple[Any, ...]] = [(r[0], r[1], r[2], int(r[3]), tuple(r[4])) for r in rules_read]
        outcomes = []
        for op in run:
            item = _inner(op)
            entries: list[tuple[Any, ...]]
            entry: tuple[Any, ...]
            if isinstance(item, DirectChain):
                entries, entry = chains, (item.family, item.table, item.chain)
            elif isinstance(item, DirectRule):
                entries, entry = rules, (item.family, item.table, item.chain, item.priority, item.args)
            else:
                raise TypeError(f"not a direct item: {item!r}")
            outcomes.append(_toggle(entries, entry, op))
        if Outcome.APPLIED in outcomes:
            settings = [fs.plain(chains), fs.plain(rules), passthroughs]
            await self._send(IFACE_CONFIG_DIRECT, "update", DIRECT_SIGNATURE, [settings], CONFIG_PATH, seen, "direct (permanent)")
        return outcomes

    async def _send(
        self,
        interface: str,
        member: str,
        signature: str,
        body: list[Any],
        path: str,
        seen: int,
        what: str,
        timeout: float | None = None,
    ) -> None:
        """The write, and a warning if firewalld changed the container for
        someone else between the read (``seen`` signals then) and it."""
        self.fw.writes += 1
        await self.fw.call(interface, member, signature, body, path=path, timeout=timeout)
        others = self._updates[path] - seen - 1  # (our own write sends one)
        if others > 0:
            self.raced += 1
            log.warning(
                "permanent_change_raced",
                container=what,
                changes=others,
                detail="someone changed it between fwrecon's read and its write, which may have overwritten that "
                "change; fwrecon's own items are in place",
            )

    async def _watch(self) -> None:
        """Count firewalld's Updated signals from now on (once per connection)."""
        if self._watching:
            return
        self.fw.bus.add_message_handler(self._on_message)
        for interface in CONFIG_INTERFACES:
            await self.fw._bus_call(
                "AddMatch", "s", [f"type='signal',sender='{fs.BUS_NAME}',interface='{interface}',member='Updated'"]
            )
        self._watching = True

    def _on_message(self, message: Message) -> None:
        if (
            message.message_type == MessageType.SIGNAL
            and message.member == "Updated"
            and message.interface in CONFIG_INTERFACES
            and message.path is not None
        ):
            self._updates[message.path] += 1


def _toggle(values: list[Any], value: Any, op: Op) -> Outcome:
    """``op``'s add or remove of ``value`` in one settings list (UNCHANGED: it was so already)."""
    if (value in values) == (op.action == "add"):
        return Outcome.UNCHANGED
    values.append(value) if op.action == "add" else values.remove(value)
    return Outcome.APPLIED


def _inner(op: Op) -> Item:
    item = op.item
    if not isinstance(item, Permanent):
        raise TypeError(f"not a permanent copy: {item!r}")
    return item.item
