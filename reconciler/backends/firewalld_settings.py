"""firewalld's D-Bus API as fwrecon reads it: the names, and how a settings
dict (``getZoneSettings2``, ``getPolicySettings`` and their permanent
counterparts) maps to items and back.  Shared by the runtime and the
permanent layer (`firewalld`, `firewalld_permanent`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dbus_fast import Variant

from ..errors import BackendUnavailable, OperationFailed
from ..model import (
    Forward,
    ForwardPort,
    IcmpBlock,
    Interface,
    Item,
    Masquerade,
    Port,
    Protocol,
    RichRule,
    Scope,
    ScopedItem,
    Service,
    Source,
    SourcePort,
)
from ..ports import canonical_port

T = TypeVar("T")

BUS_NAME = "org.fedoraproject.FirewallD1"
OBJECT_PATH = "/org/fedoraproject/FirewallD1"
# The permanent configuration's root object and interface.
CONFIG_PATH = OBJECT_PATH + "/config"
IFACE_CONFIG = BUS_NAME + ".config"
IFACE_ZONE = BUS_NAME + ".zone"
IFACE_POLICY = BUS_NAME + ".policy"
MISSING_CONTAINER_CODES = frozenset({"INVALID_ZONE", "INVALID_POLICY"})  # a zone or policy that is not there

# item kind -> (settings key, zone method suffix, D-Bus signature of the item args)
KINDS: dict[type[Item], tuple[str, str, str]] = {
    Service: ("services", "Service", "s"),
    Port: ("ports", "Port", "ss"),
    Protocol: ("protocols", "Protocol", "s"),
    SourcePort: ("source_ports", "SourcePort", "ss"),
    IcmpBlock: ("icmp_blocks", "IcmpBlock", "s"),
    Masquerade: ("masquerade", "Masquerade", ""),
    Forward: ("forward", "Forward", ""),  # (no add/remove methods: written with setZoneSettings2)
    ForwardPort: ("forward_ports", "ForwardPort", "ssss"),
    RichRule: ("rich_rules", "RichRule", "s"),
    Source: ("sources", "Source", "s"),
    Interface: ("interfaces", "Interface", "s"),
}
# Switches (a boolean settings key, present or not); a policy cannot hold the zone-only ones.
SWITCHES: dict[type[ScopedItem], str] = {Masquerade: "masquerade", Forward: "forward"}
ZONE_ONLY = frozenset({"sources", "interfaces", "forward"})
# Zones report rich rules under "rules_str"; policies under "rich_rules".
ZONE_KEY_ALIASES = {"rich_rules": "rules_str"}
ZONE_KEY_ALIASES_BACK = {v: k for k, v in ZONE_KEY_ALIASES.items()}


class MalformedReply(BackendUnavailable):
    """firewalld answered, but not in the shape of its API (a broken or fake
    service on its bus name).  Nothing it says can be trusted, so it counts as
    unavailable: no further calls in the transaction, intent kept, retried."""


def settings_signature(key: str) -> str:
    """The D-Bus signature of a settings key fwrecon reads (``masquerade``: b)."""
    if key in SWITCHES.values():
        return "b"
    item_sig = next(sig for k, _, sig in KINDS.values() if k == key)
    return f"a({item_sig})" if len(item_sig) > 1 else "as"


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def item_args(item: ScopedItem) -> list[str]:
    """The item's own arguments, in firewalld's order."""
    match item:
        case Service(name=v) | Protocol(name=v) | IcmpBlock(name=v) | Interface(name=v) | RichRule(rule=v) | Source(source=v):
            return [v]
        case Port() | SourcePort():
            return [item.port, item.protocol]
        case ForwardPort():
            return [item.port, item.protocol, item.to_port, item.to_addr]
        case Masquerade() | Forward():
            return []
    raise TypeError(f"not a zone item: {item!r}")


def settings_value(scope: Scope, settings: dict[str, Variant], key: str, member: str) -> Any:
    """The value of one settings key (None when absent), checked against the API's type."""
    if scope.kind == "zone":
        key = ZONE_KEY_ALIASES.get(key, key)
    variant = settings.get(key)
    if variant is None:
        return None
    expected = settings_signature(ZONE_KEY_ALIASES_BACK.get(key, key))
    if not isinstance(variant, Variant) or variant.signature != expected:
        found = variant.signature if isinstance(variant, Variant) else type(variant).__name__
        raise MalformedReply(f"firewalld's {member} reply for {scope.kind} {scope.name}: {key!r} is {found}, not {expected}")
    return variant.value


def items_from_settings(scope: Scope, settings: dict[str, Variant], member: str = "settings") -> list[Item]:
    """Turn a getZoneSettings2/getPolicySettings reply into items (MalformedReply if it is not one)."""
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise MalformedReply(f"firewalld's {member} reply for {scope.kind} {scope.name} is not a{{sv}}: {short(settings)}")

    builders: dict[type[Item], Callable[[Any], Item]] = {
        Service: lambda v: Service(scope, v),
        Port: lambda v: Port(scope, canonical_port(v[0]), v[1]),
        Protocol: lambda v: Protocol(scope, v),
        SourcePort: lambda v: SourcePort(scope, canonical_port(v[0]), v[1]),
        IcmpBlock: lambda v: IcmpBlock(scope, v),
        ForwardPort: lambda v: ForwardPort(scope, v[0], v[1], v[2], v[3]),
        RichRule: lambda v: RichRule(scope, v),
        Source: lambda v: Source(scope, v),
        Interface: lambda v: Interface(scope, v),
    }
    items: list[Item] = []
    for cls, build in builders.items():
        key = KINDS[cls][0]
        for v in settings_value(scope, settings, key, member) or ():
            try:
                items.append(build(v))
            except (ValueError, TypeError, IndexError) as exc:  # e.g. a port that is not one
                raise MalformedReply(
                    f"firewalld's {member} reply for {scope.kind} {scope.name}: {key} entry {short(v)} is not valid: {exc}"
                ) from exc
    items.extend(cls(scope) for cls, key in SWITCHES.items() if settings_value(scope, settings, key, member))
    return items


SWITCH_KINDS = tuple(SWITCHES)


def settings_key(item: ScopedItem) -> str:
    """The settings key that holds ``item`` (OperationFailed INVALID_SETTING
    for a zone-only kind in a policy)."""
    key = KINDS[type(item)][0]
    if item.scope.kind == "policy" and key in ZONE_ONLY:
        raise OperationFailed(f"a firewalld policy cannot hold {key}", "INVALID_SETTING")
    return key


def wire_key(scope: Scope, key: str) -> str:
    """``key`` as firewalld names it for ``scope`` (zones say rules_str)."""
    return ZONE_KEY_ALIASES.get(key, key) if scope.kind == "zone" else key


def settings_entry(item: ScopedItem) -> Any:
    """The entry ``item`` is in its settings list: a string, or a tuple of strings."""
    args = item_args(item)
    return tuple(args) if len(args) > 1 else args[0]


def plain(value: Any) -> Any:
    """A settings value with its tuples as lists, as dbus-fast sends structs."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


async def gather_all(*calls: Awaitable[T]) -> list[T]:
    """`asyncio.gather`, but the first failure cancels (and waits for) the rest:
    no call is left running, or failing unheard, once the caller has given up."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
