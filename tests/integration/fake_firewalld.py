"""A fake firewalld that owns org.fedoraproject.FirewallD1 and answers garbage.

usage: fake_firewalld.py BUS_ADDRESS MODE

Answers like an empty firewalld (zone public, policy allow-host-ipv6, service
http), except for what MODE breaks:

    zones-string        getZones returns a string, not a list of strings
    settings-not-dict   getZoneSettings2 returns a string
    settings-wrong-type getZoneSettings2's "ports" is a string, not a(ss)
    bad-port            getZoneSettings2's "ports" holds ("notaport", "tcp")
    rules-malformed     getAllRules returns 3-tuples (a(sss))
    policy-rmw          getPolicySettings answers {} once (observe), garbage after (the write's read)
    silent              never answers a method call

Prints "ready" once it owns the name.  Only dbus-fast is needed.
"""

from __future__ import annotations

import asyncio
import sys

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

BUS_NAME = "org.fedoraproject.FirewallD1"

NORMAL: dict[str, tuple[str, list]] = {
    "getZones": ("as", [["public"]]),
    "getPolicies": ("as", [["allow-host-ipv6"]]),
    "listServices": ("as", [["http", "ssh"]]),
    "listIcmpTypes": ("as", [["echo-request"]]),
    "getZoneSettings2": ("a{sv}", [{}]),
    "getPolicySettings": ("a{sv}", [{}]),
    "getAllChains": ("a(sss)", [[]]),
    "getAllRules": ("a(sssias)", [[]]),
}

BROKEN: dict[str, dict[str, tuple[str, list]]] = {
    "zones-string": {"getZones": ("s", ["public"])},
    "settings-not-dict": {"getZoneSettings2": ("s", ["ports=80/tcp"])},
    "settings-wrong-type": {"getZoneSettings2": ("a{sv}", [{"ports": Variant("s", "7000/tcp")}])},
    "bad-port": {"getZoneSettings2": ("a{sv}", [{"ports": Variant("a(ss)", [["notaport", "tcp"]])}])},
    "rules-malformed": {"getAllRules": ("a(sss)", [[["ipv4", "filter", "INPUT"]]])},
}


async def main(address: str, mode: str) -> None:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    policy_reads = 0

    def handle(message: Message) -> Message | bool | None:
        nonlocal policy_reads
        if message.message_type != MessageType.METHOD_CALL or not (message.interface or "").startswith(BUS_NAME):
            return None
        if mode == "silent":
            return True  # handled: no reply, ever
        member = message.member
        if member == "getPolicySettings":
            policy_reads += 1
            if mode == "policy-rmw" and policy_reads > 1:
                return Message.new_method_return(message, "a{sv}", [{"rich_rules": Variant("i", 3)}])
        signature, body = BROKEN.get(mode, {}).get(member) or NORMAL.get(member) or ("", [])
        if member.startswith(("add", "remove", "set")) and not signature:
            signature, body = ("s", ["public"]) if member.startswith(("add", "remove")) else ("", [])
        return Message.new_method_return(message, signature, body)

    bus.add_message_handler(handle)
    await bus.request_name(BUS_NAME)
    print("ready", flush=True)
    await bus.wait_for_disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
