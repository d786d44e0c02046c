"""The nf_tables and legacy variants of the iptables tools, picked by PATH.

A host's alternatives system points the plain names (``iptables``,
``iptables-restore``, ...) at one variant; tests and benchmarks do the same
with a directory of links put first on PATH.
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.backends.process import which

VARIANTS = ("nft", "legacy")
VARIANT_TOOLS = tuple(f"{cmd}{suffix}" for cmd in ("iptables", "ip6tables") for suffix in ("", "-save", "-restore"))


def link_variant(links: Path, variant: str) -> str | None:
    """Make ``links`` hold the plain tool names as ``variant``'s; the PATH that
    puts them first, or None when this variant is not installed."""
    multi = which(f"xtables-{variant}-multi")
    if multi is None:
        return None
    links.mkdir(exist_ok=True)
    for tool in VARIANT_TOOLS:
        (links / tool).unlink(missing_ok=True)
        (links / tool).symlink_to(multi)  # the multi binary picks its tool by the name it was run as
    return f"{links}{os.pathsep}{os.environ.get('PATH', '')}"
