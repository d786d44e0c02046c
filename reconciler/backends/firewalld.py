"""firewalld over D-Bus (dbus-fast, asyncio): never by spawning firewall-cmd.

One connection; every call has a timeout; at most a few calls in flight
(firewalld serves one call at a time, and dbus-fast has been seen to drop a
connection with hundreds in flight).  firewalld's errors arrive as
``org.fedoraproject.FirewallD1.Exception`` with a text ``CODE: detail``; the
code is kept on `OperationFailed`, and ALREADY_ENABLED / NOT_ENABLED become
`Outcome.UNCHANGED`.

Zones have one runtime method per item kind.  Runtime policy objects only
have get/setPolicySettings, so a policy item is a read-modify-write of one
settings key (firewalld diffs the new list against the old one itself).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ..errors import BackendUnavailable, OperationFailed
from ..model import (
    PERMANENT,
    DirectChain,
    DirectRule,
    Forward,
    ForwardPort,
    IcmpBlock,
    Ipset,
    IpsetEntry,
    Item,
    KnownNames,
    Masquerade,
    Op,
    Outcome,
    Permanent,
    Port,
    Protocol,
    RichRule,
    Scope,
    ScopedItem,
    Service,
    SourcePort,
    container_kind,
)
from ..view import FirewallView
from .base import BackendEvent, EventCallback, ServiceBackend, in_runs, kind_refused, one_by_one
from .firewalld_ipsets import IFACE_IPSET, IpsetLayer
from .firewalld_permanent import CONFIG_INTERFACES, PermanentLayer
from .firewalld_settings import (
    BUS_NAME,
    IFACE_POLICY,
    IFACE_ZONE,
    KINDS,
    MISSING_CONTAINER_CODES,
    OBJECT_PATH,
    SWITCHES,
    ZONE_KEY_ALIASES,
    ZONE_ONLY,
    MalformedReply,
    gather_all,
    item_args,
    items_from_settings,
    settings_value,
    short,
)

# The system bus when neither --bus-address nor $DBUS_SYSTEM_BUS_ADDRESS names one (the D-Bus spec's default).
DEFAULT_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"
IFACE_MAIN = BUS_NAME
IFACE_DIRECT = BUS_NAME + ".direct"
FIREWALLD_EXCEPTION = BUS_NAME + ".Exception"
# Errors that mean "it is already so": adding what is there, removing what is gone.
IDEMPOTENT_CODES = {
    "add": frozenset({"ALREADY_ENABLED", "ZONE_ALREADY_SET"}),
    "remove": frozenset({"NOT_ENABLED", "UNKNOWN_SOURCE", "UNKNOWN_INTERFACE"}),
}
CONTAINER_KINDS = frozenset({"zone", "policy", "direct", "ipset", PERMANENT})  # what firewalld holds (`Item.container()[0]`)
UNAVAILABLE_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Disconnected",
        "org.freedesktop.DBus.Error.Timeout",
    }
)

# A reload rebuilds every zone, policy and ipset: seconds with thousands of items.
RELOAD_TIMEOUT = 120.0
DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
# Signals that may mean something of ours is gone.  Additions are ignored:
# they cannot remove our items, and ignoring them halves the echo of our own writes.
_DRIFT_SIGNALS = frozenset({"ZoneUpdated", "PolicyUpdated", "ZoneOfInterfaceChanged", "ZoneOfSourceChanged"})
_DRIFT_INTERFACES = frozenset({IFACE_ZONE, IFACE_POLICY, IFACE_DIRECT, IFACE_IPSET})

# These zone add-methods take a trailing timeout argument (0 = permanent runtime).
_TAKES_TIMEOUT = frozenset({Service, Port, Protocol, SourcePort, IcmpBlock, Masquerade, ForwardPort, RichRule})


def _read_unit(container: tuple[str, ...]) -> tuple[str, ...]:
    """The read that covers ``container``: one for every direct table of a
    layer; one for both layers of an ipset."""
    if container[0] == PERMANENT:
        if container[1] == "ipset":
            return container[1:]
        return (PERMANENT, "direct") if container[1] == "direct" else container
    return ("direct",) if container[0] == "direct" else container


def _write_unit(op: Op) -> Hashable:
    """Runtime ops go one by one, but an ipset's entries by ipset; permanent ones by container."""
    if isinstance(op.item, (Permanent, IpsetEntry)):
        return op.item.container()
    return "runtime"


class FirewalldBackend(ServiceBackend):
    """See module docstring.  Use `connect()`; call `close()` when done."""

    name = "firewalld"

    def __init__(self, bus: MessageBus, *, timeout: float = 10.0, max_in_flight: int = 4) -> None:
        self.bus = bus
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self.calls = 0  # every D-Bus method call made, for tests and metrics
        self.writes = 0  # calls that change firewalld
        self.responsive = True  # False from a call timing out until the next reply
        self._stalls = 0  # calls timed out so far (see `call`)
        self.permanent = PermanentLayer(self)
        self.ipsets = IpsetLayer(self)
        self._reloading = False  # our own reload call is under way (`activate`)
        self._reload_signalled = False  # a Reloaded signal came while it was
        self._on_event: EventCallback | None = None  # the subscriber (`subscribe`)

    @classmethod
    async def connect(cls, bus_address: str | None = None, *, timeout: float = 10.0) -> FirewalldBackend:
        """Connect to ``bus_address``, else $DBUS_SYSTEM_BUS_ADDRESS, else the system bus."""
        address = bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS
        try:
            bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
            async with asyncio.timeout(timeout):
                await bus.connect()
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"cannot connect to the D-Bus system bus at {address}: no answer within {timeout:g} s"
            ) from exc
        except Exception as exc:  # OSError, ValueError and dbus-fast's own types for auth/handshake failures
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BackendUnavailable(f"cannot connect to the D-Bus system bus at {address}: {reason}") from exc
        return cls(bus, timeout=timeout)

    async def close(self) -> None:
        """Close the connection (dbus-fast finishes the teardown on the loop)."""
        self.bus.disconnect()
        await asyncio.sleep(0)

    # -- raw calls -------------------------------------------------------------

    async def call(
        self,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        returns: str | None = None,
        *,
        path: str = OBJECT_PATH,
        timeout: float | None = None,
    ) -> list[Any]:
        """One method call on firewalld; errors translated to fwrecon's types.

        ``returns``: the reply's D-Bus signature per firewalld's API; any other
        reply is `MalformedReply`.  ``timeout``: for a call known to take
        long (a reload, a large ipset), instead of the connection's.

        A call that times out marks firewalld unresponsive (``responsive``
        False, until a reply arrives) and fails the calls queued behind it at
        once: each would only wait out a timeout of its own, so a stopped
        firewalld costs about one timeout, not one per call.
        """
        message = Message(
            destination=BUS_NAME,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        stalls = self._stalls
        async with self._slots:
            if self._stalls != stalls:
                raise BackendUnavailable(
                    f"firewalld is not answering (an earlier call timed out after {self.timeout:g}s); {member} not sent"
                )
            self.calls += 1
            try:
                async with asyncio.timeout(timeout or self.timeout):
                    reply = await self.bus.call(message)
            except TimeoutError as exc:
                self._stalls += 1
                self.responsive = False
                raise BackendUnavailable(f"firewalld did not answer {member} within {timeout or self.timeout:g}s") from exc
            except (OSError, EOFError) as exc:
                raise BackendUnavailable(f"D-Bus connection lost during {member}: {exc}") from exc
        if reply is None:
            raise BackendUnavailable(f"D-Bus connection closed during {member}")
        self.responsive = True
        if reply.message_type == MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else reply.error_name or "unknown error"
            if reply.error_name == FIREWALLD_EXCEPTION:
                code = text.split(":", 1)[0].strip()
                raise OperationFailed(f"firewalld {member}: {text}", code)
            if reply.error_name in UNAVAILABLE_ERRORS:
                raise BackendUnavailable(f"firewalld is not available ({reply.error_name}): {text}")
            raise OperationFailed(f"{member}: {reply.error_name}: {text}", reply.error_name)
        if returns is not None and reply.signature != returns:
            raise MalformedReply(
                f"firewalld answered {member} with signature {reply.signature!r} instead of {returns!r}: {short(reply.body)}"
            )
        return list(reply.body)

    # -- observe ---------------------------------------------------------------

    async def observe(
        self,
        containers: Collection[tuple[str, ...]],
        known: Iterable[Item] | None = None,
        *,
        removable: Collection[Item] | None = None,
    ) -> FirewallView:
        """One read per zone and policy; one getAllChains + getAllRules for
        every direct table; the same per container in the permanent layer;
        with an ipset that may be removed, what uses it in every zone and
        policy (`IpsetLayer.users`).
        (firewalld reports items as themselves: ``known`` is not needed.)"""
        wanted = set(containers)
        reads = sorted({_read_unit(c) for c in wanted})
        results = await gather_all(*(self.read_unit(container) for container in reads))
        items: list[Item] = []
        missing = []
        counts: dict[tuple[str, ...], object] = {}  # ipset -> its runtime entries (`IpsetLayer.write_entries`)
        for container, found in zip(reads, results, strict=True):
            if found is None:
                missing.append(container)
            elif container[0] == "ipset":
                ipset_items, counts[container] = found  # (both layers: the ipset holds its permanent entries too)
                items.extend(ipset_items)
            else:
                items.extend(item for item in found if item.container() in wanted)
        # Their users cost a read of every zone and policy (about 37 calls): only for an ipset a plan may remove.
        ipsets = [
            item
            for item in items  # (the few ipsets there are: a policy's list is its entries)
            if type(item) is Ipset and (removable is None or item in removable)
        ]
        users = await self.ipsets.users(ipsets, wanted) if ipsets else {}
        return FirewallView(items, containers, missing, users=users, reads=counts)

    async def read_unit(self, container: tuple[str, ...]) -> Any:
        """The items of one read unit (None: the zone or policy is unknown);
        of an ipset, with its runtime entry count (`IpsetLayer.read`)."""
        try:
            match container:
                case ("ipset", name):
                    return await self.ipsets.read(name)
                case (layer, *runtime) if layer == PERMANENT:
                    return await self.permanent.read(tuple(runtime))
                case ("zone", name):
                    (settings,) = await self.call(IFACE_ZONE, "getZoneSettings2", "s", [name], returns="a{sv}")
                    return items_from_settings(Scope("zone", name), settings, "getZoneSettings2")
                case ("policy", name):
                    (settings,) = await self.call(IFACE_POLICY, "getPolicySettings", "s", [name], returns="a{sv}")
                    return items_from_settings(Scope("policy", name), settings, "getPolicySettings")
                case ("direct",):
                    # The reply signatures fix the tuples' shapes and types.
                    (chains,), (rules,) = await gather_all(
                        self.call(IFACE_DIRECT, "getAllChains", returns="a(sss)"),
                        self.call(IFACE_DIRECT, "getAllRules", returns="a(sssias)"),
                    )
                    return [DirectChain(*c) for c in chains] + [
                        DirectRule(r[0], r[1], r[2], int(r[3]), tuple(r[4])) for r in rules
                    ]
        except OperationFailed as exc:
            if exc.code in MISSING_CONTAINER_CODES:
                return None
            raise
        raise ValueError(f"unknown container {container!r}")

    # -- execute ---------------------------------------------------------------

    async def apply(self, ops: Sequence[Op], seen: FirewallView | None = None) -> list[Outcome]:
        """One D-Bus call per runtime op (firewalld has no batch for runtime
        items); one per run of permanent ops on one container (`PermanentLayer.write`)."""
        return await in_runs(ops, _write_unit, self._write_run, seen)

    async def _write_run(self, run: Sequence[Op], seen: FirewallView | None) -> list[Outcome]:
        if isinstance(run[0].item, Permanent):
            return await self.permanent.write(run)
        if isinstance(run[0].item, IpsetEntry):
            return await self.ipsets.write_entries(run, seen)
        return await one_by_one(run, self._execute)

    def read_afresh(self) -> None:
        """Nothing: every observe asks firewalld."""

    async def activate(self) -> bool:
        """The one reload that brings the ipsets created since the last into
        the runtime, unless they are there already (someone reloaded since)."""
        if not self.ipsets.to_load:
            return False
        (loaded,) = await self.call(IFACE_IPSET, "getIPSets", returns="as")
        if self.ipsets.to_load <= set(loaded):
            self.ipsets.to_load.clear()
            return False
        self.writes += 1
        # firewalld sends Reloaded before its reply, and dbus-fast hands a
        # signal on before the reply resumes us: the signal sees the flag.
        self._reloading, self._reload_signalled = True, False
        try:
            await self.call(IFACE_MAIN, "reload", timeout=RELOAD_TIMEOUT)
        except BaseException:
            # A reload did happen (ours despite the error, or one queued just
            # before it, taken for ours): the subscriber must hear of it as such.
            if self._reload_signalled and self._on_event is not None:
                self._on_event(BackendEvent.RELOADED)
            raise
        finally:
            self._reloading = False
        self.ipsets.to_load.clear()
        return True

    async def refusals(self, items: Collection[Item], *, ask_tools: bool = False) -> dict[Item, str]:
        """Only nft sections: every zone, policy and direct item is firewalld's
        to judge when it is applied (names it does not know are checked
        against `known_names` before that)."""
        return {item: kind_refused(item) for item in items if container_kind(item) not in CONTAINER_KINDS}

    def refusal_key(self) -> Hashable:
        return None  # what firewalld refuses does not depend on the host

    def name_for(self, item: Item) -> str:
        return self.name

    async def _execute(self, op: Op) -> Outcome:
        item = op.item
        try:
            if isinstance(item, DirectChain):
                await self._write(IFACE_DIRECT, f"{op.action}Chain", "sss", [item.family, item.table, item.chain])
            elif isinstance(item, DirectRule):
                args = [item.family, item.table, item.chain, item.priority, list(item.args)]
                await self._write(IFACE_DIRECT, f"{op.action}Rule", "sssias", args)
            elif isinstance(item, ScopedItem) and (item.scope.kind == "policy" or isinstance(item, Forward)):
                return await self._execute_by_settings(op, item)
            elif isinstance(item, ScopedItem):
                await self._execute_zone_item(op, item)
            elif isinstance(item, Ipset):
                return await self.ipsets.write_ipset(op)
            else:
                raise TypeError(f"firewalld cannot hold {item!r}")
        except OperationFailed as exc:
            if exc.code in IDEMPOTENT_CODES[op.action]:
                return Outcome.UNCHANGED
            raise
        return Outcome.APPLIED

    async def _write(self, interface: str, member: str, signature: str, body: list[Any]) -> None:
        self.writes += 1
        await self.call(interface, member, signature, body)

    async def _execute_zone_item(self, op: Op, item: ScopedItem) -> None:
        _, suffix, item_sig = KINDS[type(item)]
        body: list[Any] = [item.scope.name, *item_args(item)]
        signature = "s" + item_sig
        if op.action == "add" and type(item) in _TAKES_TIMEOUT:
            body.append(0)
            signature += "i"
        await self._write(IFACE_ZONE, f"{op.action}{suffix}", signature, body)

    async def _execute_by_settings(self, op: Op, item: ScopedItem) -> Outcome:
        """Read the one settings key, change it, write it back: how a policy's
        items are written, and a zone's forward (firewalld has no add/remove
        call for either)."""
        key, _, item_sig = KINDS[type(item)]
        if item.scope.kind == "policy":
            if key in ZONE_ONLY:
                raise OperationFailed(f"a firewalld policy cannot hold {key}", "INVALID_SETTING")
            interface, get, put = IFACE_POLICY, "getPolicySettings", "setPolicySettings"
        else:
            interface, get, put = IFACE_ZONE, "getZoneSettings2", "setZoneSettings2"
            key = ZONE_KEY_ALIASES.get(key, key)
        (settings,) = await self.call(interface, get, "s", [item.scope.name], returns="a{sv}")
        if type(item) in SWITCHES:
            current = bool(settings_value(item.scope, settings, SWITCHES[type(item)], get))
            wanted = op.action == "add"
            if current == wanted:
                return Outcome.UNCHANGED
            new = Variant("b", wanted)
        else:
            present = [
                tuple(v) if isinstance(v, list) else v
                for v in settings_value(item.scope, settings, KINDS[type(item)][0], get) or []
            ]
            args = item_args(item)
            value: Any = tuple(args) if len(args) > 1 else args[0]
            if (value in present) == (op.action == "add"):
                return Outcome.UNCHANGED
            values = [*present, value] if op.action == "add" else [v for v in present if v != value]
            signature = f"a({item_sig})" if len(item_sig) > 1 else "as"
            new = Variant(signature, [list(v) if isinstance(v, tuple) else v for v in values])
        await self._write(interface, put, "sa{sv}", [item.scope.name, {key: new}])
        return Outcome.APPLIED

    # -- events ----------------------------------------------------------------

    async def subscribe(self, callback: EventCallback) -> None:
        """Reloaded, bus-name owner changes and change signals → ``callback``."""
        self._on_event = callback

        def on_message(message: Message) -> None:
            if message.message_type != MessageType.SIGNAL:
                return
            if message.interface == DBUS_NAME and message.member == "NameOwnerChanged":
                name, _old, new = message.body
                if name == BUS_NAME:
                    callback(BackendEvent.APPEARED if new else BackendEvent.VANISHED)
            elif message.interface == IFACE_MAIN and message.member == "Reloaded":
                if self._reloading:
                    self._reload_signalled = True
                    callback(BackendEvent.OWN_RELOAD)
                else:
                    self.ipsets.to_load.clear()  # (it loaded them: nothing is left for `activate`)
                    callback(BackendEvent.RELOADED)
            elif message.interface in CONFIG_INTERFACES and message.member in ("Updated", "Removed"):
                callback(BackendEvent.CHANGED)  # the permanent layer (our own writes echo once: a reconcile with no writes)
            elif (
                message.interface in _DRIFT_INTERFACES
                and message.member is not None
                and (message.member.endswith("Removed") or message.member in _DRIFT_SIGNALS)
            ):
                callback(BackendEvent.CHANGED)

        self.bus.add_message_handler(on_message)
        for rule in (
            f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',member='NameOwnerChanged',arg0='{BUS_NAME}'",
            f"type='signal',sender='{BUS_NAME}',interface='{IFACE_MAIN}',member='Reloaded'",
            *(f"type='signal',sender='{BUS_NAME}',interface='{iface}'" for iface in sorted(_DRIFT_INTERFACES)),
            *(f"type='signal',sender='{BUS_NAME}',interface='{iface}'" for iface in CONFIG_INTERFACES),
        ):
            await self._bus_call("AddMatch", "s", [rule])

    async def is_up(self) -> bool:
        (has_owner,) = await self._bus_call("NameHasOwner", "s", [BUS_NAME])
        return bool(has_owner)

    async def wait_closed(self) -> None:
        await self.bus.wait_for_disconnect()

    async def _bus_call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        """A call to the bus daemon itself (not to firewalld)."""
        message = Message(
            destination=DBUS_NAME, path=DBUS_PATH, interface=DBUS_NAME, member=member, signature=signature, body=body
        )
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self.bus.call(message)
        except (TimeoutError, OSError, EOFError) as exc:
            raise BackendUnavailable(f"D-Bus {member} failed: {exc}") from exc
        if reply is None or reply.message_type == MessageType.ERROR:
            raise BackendUnavailable(f"D-Bus {member} failed: {reply.body if reply else 'no reply'}")
        return list(reply.body)

    # -- names -----------------------------------------------------------------

    async def known_names(self) -> KnownNames:
        (zones,), (policies,), (services,), (icmp_types,) = await gather_all(
            self.call(IFACE_ZONE, "getZones", returns="as"),
            self.call(IFACE_POLICY, "getPolicies", returns="as"),
            self.call(IFACE_MAIN, "listServices", returns="as"),
            self.call(IFACE_MAIN, "listIcmpTypes", returns="as"),
        )
        return KnownNames(frozenset(zones), frozenset(policies), frozenset(services), frozenset(icmp_types))
