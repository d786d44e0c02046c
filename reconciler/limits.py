"""Names, numbers and texts that policy validation and the backends both judge.

Each rule lives here once: when validation and a backend kept their own
copies they drifted apart, and ``check`` passed what ``apply`` refused (or
what the kernel silently changed, such as an nft priority beyond 32 bits).
Pure: no I/O, no backend imports.
"""

from __future__ import annotations

import re

# A rule's text (nft) or argument (direct) must stay on one line of the script
# a tool reads (nft -f, *-restore).
LINE_BREAK_OR_NUL = re.compile(r"[\n\r\0]")

# -- nftables ---------------------------------------------------------------------------

NFT_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
NFT_HOOKS = {
    "ip": ("prerouting", "input", "forward", "output", "postrouting"),
    "ip6": ("prerouting", "input", "forward", "output", "postrouting"),
    "inet": ("prerouting", "input", "forward", "output", "postrouting"),
    "arp": ("input", "output"),
    "bridge": ("prerouting", "input", "forward", "output", "postrouting"),
    "netdev": (),  # ingress/egress chains need a device: not supported here
}
NFT_CHAIN_TYPES = ("filter", "nat", "route")
NFT_CHAIN_POLICIES = ("accept", "drop")
# The kernel keeps a base chain's priority as a signed 32-bit number; nft
# silently wraps anything beyond, and the chain would then never match its item.
NFT_PRIORITY_RANGE = (-(2**31), 2**31 - 1)
# A subset of what nft's scanner takes (no '/', 64 characters at most), the
# same for fwrecon's own table, chains and sets.
NFT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
NFT_NAME_TEXT = "letters, digits, '_', '.', '-'; up to 64"
NFT_JUMP_RE = re.compile(r"\b(?:jump|goto)\s+([A-Za-z_][A-Za-z0-9_.-]*)")
NFT_SET_REF_RE = re.compile(r"@([A-Za-z_][A-Za-z0-9_.-]*)")


def nft_rule_problem(rule: str) -> str | None:
    """Why ``rule`` cannot be one fwrecon-tagged nft rule, or None.

    Outside double quotes (nft strings have no escapes) a rule may not contain
    ``;`` (a second command), ``#`` (a comment swallowing the tag) or the
    ``comment`` keyword (nft allows one comment, and fwrecon's tag needs it).
    """
    if not rule.strip():
        return "empty rule"
    if LINE_BREAK_OR_NUL.search(rule):
        return "rule text contains a line break or NUL"
    pieces = rule.split('"')  # nft strings have no escapes: odd pieces are quoted
    if len(pieces) % 2 == 0:
        return "rule text has an unterminated string"
    bare = " ".join(pieces[::2])
    if ";" in bare:
        return "rule text contains ';' (one rule per item)"
    if "#" in bare:
        return "rule text contains '#' (it would turn fwrecon's ownership tag into a comment)"
    if "comment" in bare.split():
        return 'rule has its own comment; fwrecon needs the comment for its ownership tag "fwrecon:<hash>"'
    return None


def nft_jump_targets(rule: str) -> set[str]:
    """Chains an nft rule text jumps or goes to (outside quoted strings)."""
    bare = " ".join(rule.split('"')[::2])
    return set(NFT_JUMP_RE.findall(bare))


def nft_set_references(rule: str) -> set[str]:
    """Named sets an nft rule text uses (``@name``, outside quoted strings)."""
    bare = " ".join(rule.split('"')[::2])
    return set(NFT_SET_REF_RE.findall(bare))


# -- direct rules (iptables, ip6tables, ebtables) --------------------------------------

DIRECT_TABLES = {
    "ipv4": ("filter", "nat", "mangle", "raw", "security"),
    "ipv6": ("filter", "nat", "mangle", "raw", "security"),
    "eb": ("filter", "nat", "broute"),
}
# Built-in chains per family and table: rules may go there without a declaration.
_IP_BUILTIN = {
    "filter": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
    "nat": frozenset({"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}),
    "mangle": frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}),
    "raw": frozenset({"PREROUTING", "OUTPUT"}),
    "security": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
}
DIRECT_BUILTIN_CHAINS: dict[str, dict[str, frozenset[str]]] = {
    "ipv4": _IP_BUILTIN,
    "ipv6": _IP_BUILTIN,
    "eb": {
        "filter": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
        "nat": frozenset({"PREROUTING", "OUTPUT", "POSTROUTING"}),
        "broute": frozenset({"BROUTING"}),
    },
}
# iptables keeps 28 characters of a chain name; a leading '-' would read as an option.
DIRECT_CHAIN_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,27}")
DIRECT_CHAIN_TEXT = "1-28 of letters, digits, '_', '.', '-', not starting with '-'"
# firewalld's direct interface takes the priority as a D-Bus int32.
DIRECT_PRIORITY_RANGE = (-(2**31), 2**31 - 1)
