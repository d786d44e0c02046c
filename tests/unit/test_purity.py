"""The pure core imports nothing that does I/O.

Planning decides what fwrecon removes, so it must stay a function of values:
importing the core in a fresh interpreter must not load asyncio, subprocess,
dbus_fast, watchdog or prometheus_client (ARCHITECTURE.md says why).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = (
    "reconciler.model",
    "reconciler.limits",
    "reconciler.ports",
    "reconciler.nftsets",
    "reconciler.richrule",
    "reconciler.policy",
    "reconciler.view",
    "reconciler.planner",
)
IO = ("asyncio", "subprocess", "dbus_fast", "watchdog", "prometheus_client", "structlog")


def test_the_core_loads_no_io_module() -> None:
    script = (
        "import json, sys\n"
        f"for name in {CORE!r}: __import__(name)\n"
        f"print(json.dumps(sorted(m for m in {IO!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(result.stdout) == []
