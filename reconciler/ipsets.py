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

# The types fwrecon declares: the ones firewalld lets a zone source
# (``ipset:NAME``) and a rich rule's ``source ipset=`` use (its
# SOURCE_IPSET_TYPES); the others can only be matched by direct rules.
IPSET_TYPES = ("hash:ip", "hash:net", "hash:mac", "hash:ip,port", "hash:net,port", "hash:net,iface", "hash:ip,mark")
# An entry of each composite type, for the error that says how one looks.
_EXAMPLES = {
    "hash:ip,port": "192.0.2.1,tcp:443",
    "hash:net,port": "192.0.2.0/24,udp:53",
    "hash:net,iface": "192.0.2.0/24,eth0",
    "hash:ip,mark": "192.0.2.1,0x10",
}
PORT_PROTOCOLS = ("tcp", "udp", "sctp", "udplite")
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
_PORT = re.compile(r"(?:([A-Za-z]+):)?([0-9]{1,5})")
# firewalld's checkInterface, in printable ASCII (the kernel counts bytes), and ',' parts an entry
_IFACE = re.compile(r"(?:(?![/:!*,])[\x21-\x7e]){1,15}")
# Hex, or decimal without leading zeros (ipset would read "010" as octal);
# not int()'s "1_000" or other scripts' digits.
_MARK = re.compile(r"0[xX][0-9A-Fa-f]{1,16}|0|[1-9][0-9]{0,19}")
MARK_MAX = 2**32 - 1


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
    """``text`` as fwrecon writes it into an ipset of ``ipset_type``; ValueError says why not.

    A composite entry is its parts joined by ``,``, each in its own canonical
    form: a port as ``PROTOCOL:PORT`` (tcp when none is given), a mark in hex."""
    value = text.strip()
    if ipset_type not in IPSET_TYPES:
        raise ValueError(f"ipset type {ipset_type!r} is not one of {'|'.join(IPSET_TYPES)}")
    if family != "inet6" and ipset_type in ("hash:ip", "hash:net") and IPV4_RE.fullmatch(value) and value != "0.0.0.0":
        return value if ipset_type == "hash:ip" else f"{value}/32"  # (the common entry, without ipaddress)
    kinds = ipset_type.removeprefix("hash:").split(",")
    parts = [part.strip() for part in value.split(",")] if len(kinds) > 1 else [value]
    if len(parts) != len(kinds):
        raise ValueError(f"{text!r} is not an entry of a {ipset_type} ipset (one looks like {_EXAMPLES[ipset_type]!r})")
    return ",".join(_PARTS[kind](part, family, ipset_type) for kind, part in zip(kinds, parts, strict=True))


def _address(part: str, family: str, ipset_type: str) -> str:
    version = _version(family)
    try:
        address = ipaddress.ip_address(part) if "%" not in part else None  # (no scope id: firewalld refuses one)
    except ValueError:
        address = None
    if address is None:
        hint = f" (a network: use type {ipset_type.replace('hash:ip', 'hash:net')})" if "/" in part else ""
        raise ValueError(f"{part!r} is not an IPv{version} address{hint}")
    if address.version != version:
        raise ValueError(f"{part!r} is an IPv{address.version} address in a family {family} ipset")
    if address.is_unspecified:
        raise ValueError(f"{part!r} cannot be in an ipset")
    return str(address)


def _network(part: str, family: str, ipset_type: str) -> str:
    version = _version(family)
    try:
        network = ipaddress.ip_network(part, strict=False) if "%" not in part else None
    except ValueError:
        network = None
    if network is None:
        raise ValueError(f"{part!r} is not an IPv{version} address or network")
    if network.version != version:
        raise ValueError(f"{part!r} is an IPv{network.version} network in a family {family} ipset")
    if network.prefixlen == 0:
        raise ValueError(f"{part!r}: a /0 network cannot be in an ipset")
    return str(network)


def _mac(part: str, family: str, ipset_type: str) -> str:
    if not _MAC.fullmatch(part):
        raise ValueError(f"{part!r} is not a MAC address (hash:mac)")
    if part == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 cannot be in an ipset")
    return part.upper()


def _port(part: str, family: str, ipset_type: str) -> str:
    found = _PORT.fullmatch(part)
    if found is None:
        raise ValueError(
            f"{part!r} is not a port: PROTOCOL:PORT, e.g. tcp:443 (tcp when none is given; "
            "port ranges, names and icmp types are not offered)"
        )
    protocol, port = (found[1] or "tcp").lower(), int(found[2])
    if protocol not in PORT_PROTOCOLS:
        raise ValueError(f"{part!r}: protocol {protocol!r} is not one of {'|'.join(PORT_PROTOCOLS)}")
    if not 1 <= port <= 65535:
        raise ValueError(f"{part!r}: port {port} is not in 1-65535")
    return f"{protocol}:{port}"


def _interface(part: str, family: str, ipset_type: str) -> str:
    if not _IFACE.fullmatch(part) or part in (".", ".."):
        raise ValueError(f"{part!r} is not an interface name (1-15 characters, no '/', ':', '!', '*', ',' or spaces)")
    return part


def _mark(part: str, family: str, ipset_type: str) -> str:
    if not _MARK.fullmatch(part):
        raise ValueError(f"{part!r} is not a mark (a number, decimal without leading zeros or 0x hex)")
    mark = int(part, 16) if part.lower().startswith("0x") else int(part, 10)
    if not 0 <= mark <= MARK_MAX:
        raise ValueError(f"{part!r}: a mark is 0 to 0x{MARK_MAX:x}")
    return f"0x{mark:x}"


def _version(family: str) -> int:
    return 6 if family == "inet6" else 4


_PARTS = {"ip": _address, "net": _network, "mac": _mac, "port": _port, "iface": _interface, "mark": _mark}


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
