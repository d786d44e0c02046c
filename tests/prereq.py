"""Prerequisites of tests that need root and real tools.

On a developer's laptop without them, such tests skip with a reason; when
CI=true a missing prerequisite fails instead, so a missing install step can
never hide behind a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest

from reconciler.backends.process import which


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_tools(purpose: str, tools: Iterable[str], *, root: bool = True) -> None:
    missing = ["root privileges"] if root and os.geteuid() != 0 else []
    missing += [tool for tool in tools if which(tool) is None]
    if missing:
        skip_or_fail(f"{purpose} need: {', '.join(missing)}")
