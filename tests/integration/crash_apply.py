"""Run one reconcile and SIGKILL ourselves right after N writes (used by the tests).

usage: crash_apply.py BACKEND BUS_ADDRESS POLICY_DIR STATE_FILE N [PERSIST]

BACKEND is a --backend mode; a write is one D-Bus call or one *-restore /
nft -f batch.
"""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import FaultyBackend

from reconciler.backends.select import connect
from reconciler.engine import Reconciler
from reconciler.policydir import load_policy_dir
from reconciler.state import StateStore


async def main(mode: str, bus: str, policy_dir: str, state_file: str, kill_after: int, persist: str) -> None:
    _, router = await connect(mode, bus)  # type: ignore[arg-type]
    backend = FaultyBackend(router, kill_after_writes=kill_after)
    await Reconciler(backend, StateStore(state_file), names=backend.known_names, persist=persist).reconcile(
        load_policy_dir(policy_dir)
    )
    raise SystemExit("reconcile finished without reaching the kill point")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), (sys.argv[6:] or ["runtime"])[0]))
