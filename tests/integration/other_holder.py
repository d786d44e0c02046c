"""Another tool that holds a firewalld item, as libvirt, docker and netavark do.

usage: other_holder.py BUS_ADDRESS ZONE INTERFACE DELAY_SECONDS

Binds INTERFACE to ZONE, prints "ready", and after every ``Reloaded`` signal
waits DELAY_SECONDS and binds it again (printing "re-added N"), the way those
tools put their runtime items back some hundreds of milliseconds after a
reload.  Runs until killed.  dbus-fast only, like fwrecon.
"""

from __future__ import annotations

import asyncio
import sys

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

FW = "org.fedoraproject.FirewallD1"
PATH = "/org/fedoraproject/FirewallD1"


async def bind(bus: MessageBus, zone: str, interface: str) -> None:
    reply = await bus.call(
        Message(destination=FW, path=PATH, interface=FW + ".zone", member="addInterface", signature="ss", body=[zone, interface])
    )
    if reply is not None and reply.message_type == MessageType.ERROR:
        text = str(reply.body[0]) if reply.body else reply.error_name
        if "ZONE_ALREADY_SET" not in text:
            raise SystemExit(f"addInterface failed: {text}")


async def main(address: str, zone: str, interface: str, delay: float) -> None:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    readds = 0
    pending: set[asyncio.Task[None]] = set()

    async def readd() -> None:
        nonlocal readds
        await asyncio.sleep(delay)
        await bind(bus, zone, interface)
        readds += 1
        print(f"re-added {readds}", flush=True)

    def on_message(message: Message) -> None:
        if message.message_type == MessageType.SIGNAL and message.interface == FW and message.member == "Reloaded":
            task = asyncio.ensure_future(readd())
            pending.add(task)
            task.add_done_callback(pending.discard)

    bus.add_message_handler(on_message)
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[f"type='signal',sender='{FW}',interface='{FW}',member='Reloaded'"],
        )
    )
    await bind(bus, zone, interface)
    print("ready", flush=True)
    await bus.wait_for_disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
