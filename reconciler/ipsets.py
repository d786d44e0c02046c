"""firewalld ipsets as fwrecon writes them: types, options and each entry's
one canonical form.

firewalld keeps an entry as it was given, except that a part with a mask is
normalised (``ipaddress.ip_network(part, strict=False)``), so fwrecon writes
every entry in the form it then reads back: addresses compressed and lower
case, networks without host bits, MAC addresses upper case.  Pure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from .nftsets import IPV4_RE

# The types fwrecon declares (firewalld has more; these are the ones a zone
# source ``ipset:NAME`` and a rich rule's ``source ipset=`` take).
IPSET_TYPES = ("hash:ip", "hash:net", "hash:mac")
IPSET_FAMILIES = ("inet", "inet6")
IPSET_NAME_MAX = 32  # firewalld's IPSET_MAXNAMELEN
IPSET_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
IPSET_NAME_TEXT = f"letters, digits, '_', '.' and '-', at most {IPSET_NAME_MAX} characters"
# Creation options fwrecon passes on (positive integers), with firewalld's defaults,
# which are left out on both sides so that an ipset made without them compares equal.
IPSET_OPTIONS = {"hashsize": "1024", "maxelem": "65536"}
REFUSED_OPTIONS = {
    "timeout": "firewalld keeps no entries of an ipset with a timeout (IPSET_WITH_TIMEOUT), "
    "so fwrecon could neither list nor own them",
}
_MAC = re.compile(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}")


def default_family(ipset_type: str) -> str:
    """The family of an ipset that names none: inet, and none for hash:mac (firewalld refuses one there)."""
    return "" if ipset_type == "hash:mac" else "inet"


def canonical_options(options: Mapping[str, str]) -> tuple[str, ...]:
    """``key=value`` of the options that differ from firewalld's defaults, sorted;
    ``family`` is not among them (`Ipset.family`)."""
    found = []
    for key, value in options.items():
        if key == "family":
            continue
        text = str(int(value)) if value.strip().isdigit() else value
        if IPSET_OPTIONS.get(key) != text:
            found.append(f"{key}={text}")
    return tuple(sorted(found))


def options_dict(family: str, options: Iterable[str]) -> dict[str, str]:
    """What firewalld's settings take (``a{ss}``) for an `Ipset`'s family and options."""
    found = dict(option.split("=", 1) for option in options)
    if family:
        found["family"] = family
    return found


def canonical_entry(ipset_type: str, family: str, text: str) -> str:
    """``text`` as fwrecon writes it into an ipset of ``ipset_type``; ValueError says why not."""
    value = text.strip()
    if ipset_type == "hash:mac":
        if not _MAC.fullmatch(value):
            raise ValueError(f"{text!r} is not a MAC address (hash:mac)")
        if value == "00:00:00:00:00:00":
            raise ValueError("00:00:00:00:00:00 cannot be in an ipset")
        return value.upper()
    version = 6 if family == "inet6" else 4
    if version == 4 and ipset_type in ("hash:ip", "hash:net") and IPV4_RE.fullmatch(value) and value != "0.0.0.0":
        return value if ipset_type == "hash:ip" else f"{value}/32"  # (the common entry, without ipaddress)
    if ipset_type == "hash:ip":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            hint = " (a network: use type hash:net)" if "/" in value else ""
            raise ValueError(f"{text!r} is not an IPv{version} address{hint}") from None
        if address.version != version:
            raise ValueError(f"{text!r} is an IPv{address.version} address in a family {family} ipset")
        if address.is_unspecified:
            raise ValueError(f"{text!r} cannot be in an ipset")
        return str(address)
    if ipset_type != "hash:net":
        raise ValueError(f"ipset type {ipset_type!r} is not one of {'|'.join(IPSET_TYPES)}")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv{version} address or network") from None
    if network.version != version:
        raise ValueError(f"{text!r} is an IPv{network.version} network in a family {family} ipset")
    if network.prefixlen == 0:
        raise ValueError(f"{text!r}: a /0 network cannot be in an ipset")
    return str(network)


def overlapping(entries: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of canonical hash:net entries that overlap (firewalld refuses
    them: ``INVALID_ENTRY``), each pair as (covering, covered)."""
    by_version: dict[int, list[tuple[int, int, str]]] = {}  # version -> (first, last address, entry)
    for entry in entries:
        network = ipaddress.ip_network(entry)
        first, last = int(network.network_address), int(network.broadcast_address)
        by_version.setdefault(network.version, []).append((first, -last, entry))
    pairs = []
    for spans in by_version.values():
        spans.sort()  # by first address, the widest first: CIDR networks nest or lie apart
        covering: tuple[int, str] | None = None  # (last address, entry)
        for first, negative_last, entry in spans:
            if covering is not None and first <= covering[0]:
                pairs.append((covering[1], entry))
            else:
                covering = (-negative_last, entry)
    return pairs
