"""``fwrecon apply`` (the real command line) that freezes firewalld with SIGSTOP
right after N writes; used by the tests of a firewall that stops answering.

usage: freeze_apply.py FIREWALLD_PID N FWRECON-ARGS...   (e.g. apply --timeout 2 --bus-address ...)
"""

import sys
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parent),
    str(Path(__file__).resolve().parents[2]),
]  # faults; this checkout's reconciler

from faults import FaultyBackend  # noqa: E402

import reconciler.cli as cli  # noqa: E402

real_connect = cli.select_backends


def main(pid: int, stop_after: int, argv: list[str]) -> int:
    async def connect_faulty(mode, bus_address, timeout):  # type: ignore[no-untyped-def]
        backends, router = await real_connect(mode, bus_address, timeout)
        return backends, FaultyBackend(router, stop_after_writes=stop_after, stop_pid=pid)

    cli.select_backends = connect_faulty  # type: ignore[assignment]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
