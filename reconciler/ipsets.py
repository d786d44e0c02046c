"""firewalld ipsets as fwrecon writes them: types, options and each entry's
one canonical form.

firewalld keeps an entry as it was given, except that a part with a mask is
normalised (``ipaddress.ip_network(part, strict=False)``), so fwrecon writes
every entry in the form it then reads back: addresses compressed and lower
case, networks without host bits, MAC addresses upper case.  Pure.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .nftsets import IPV4_RE, ipv4_value, meeting_another

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
_PORT = re.compile(r"(?:([A-Za-z]+):)?([0-9]{1,5})(?:-([0-9]{1,5}))?")
# firewalld 1.3.3 takes "icmp:TYPE" into a hash:ip,port, but its nftables backend then
# hands nft the type as a port range ("echo-request" as echo to request) and fails.
_ICMP = ("icmp", "icmpv6", "ipv6-icmp")
# firewalld's checkInterface, in printable ASCII (the kernel counts bytes), and ',' parts an entry
_IFACE = re.compile(r"(?:(?![/:!*,])[\x21-\x7e]){1,15}")
# Hex, or decimal without leading zeros (ipset would read "010" as octal);
# not int()'s "1_000" or other scripts' digits.
_MARK = re.compile(r"0[xX][0-9A-Fa-f]{1,16}|0|[1-9][0-9]{0,19}")
MARK_MAX = 2**32 - 1
OVERLAP_REFUSED = "firewalld's nftables backend refuses overlapping entries"


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
    if part.partition(":")[0].lower() in _ICMP:
        raise ValueError(f"{part!r}: icmp types are not offered (firewalld 1.3.3's nftables backend fails to add them)")
    found = _PORT.fullmatch(part)
    if found is None:
        raise ValueError(
            f"{part!r} is not a port: PROTOCOL:PORT or PROTOCOL:FIRST-LAST, e.g. tcp:443 or udp:60000-61000 "
            "(tcp when none is given; port names are not offered)"
        )
    protocol, low = (found[1] or "tcp").lower(), int(found[2])
    high = int(found[3]) if found[3] else low
    if protocol not in PORT_PROTOCOLS:
        raise ValueError(f"{part!r}: protocol {protocol!r} is not one of {'|'.join(PORT_PROTOCOLS)}")
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise ValueError(f"{part!r}: port {port} is not in 1-65535")
    if low > high:
        raise ValueError(f"{part!r}: the range's first port is above its last")
    return f"{protocol}:{low}" if low == high else f"{protocol}:{low}-{high}"


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


def overlapping(ipset_type: str, entries: Iterable[str]) -> list[tuple[str, str]]:
    """Canonical entries that overlap, as (one it overlaps, the entry), in the
    order given; empty when no two overlap.  firewalld's nftables backend
    keeps an ipset with a network or port part as an nft interval set, and
    nft refuses an element that overlaps another ("File exists").  Two
    entries overlap when their networks nest (or are equal), their port
    ranges meet and their other parts are equal; the entry named is the one
    whose network lies in the other's or, in one network, whose ports start
    later.

    O(n log n): an entry is compared only with the entries whose network
    holds its own, at the prefix lengths in use, by a binary search."""
    kinds = ipset_type.removeprefix("hash:").split(",")
    if "net" not in kinds and "port" not in kinds:
        return []  # single values: equal entries are one entry
    entries = list(entries)
    spans = [_span(kinds, entry) for entry in entries]
    cells: dict[tuple[Any, ...], list[tuple[int, int, int]]] = {}  # (exact parts, version, network) -> port spans
    lengths: dict[tuple[Any, ...], set[int]] = {}  # (exact parts, version) -> prefix lengths in use
    for index, (exact, (version, first, length, _), ports) in enumerate(spans):
        cells.setdefault((exact, version, first, length), []).append((*ports, index))
        lengths.setdefault((exact, version), set()).add(length)
    named: dict[int, int] = {}  # entry -> the entry it overlaps
    sweeps: dict[tuple[Any, ...], _Sweep] = {}  # the cells of more than one span, and those looked up
    for cell, found in cells.items():
        if len(found) > 1:
            sweeps[cell] = sweep = _Sweep(found)
            for at in range(1, len(found)):  # in one network: a span that starts before the widest so far ends
                if found[at][0] <= sweep.highest[at - 1]:
                    named[found[at][2]] = found[sweep.widest[at - 1]][2]
    shorter_first = {group: sorted(found, reverse=True) for group, found in lengths.items() if len(found) > 1}
    for index, (exact, (version, first, length, bits), (low, high)) in enumerate(spans):
        for shorter in shorter_first.get((exact, version), ()):
            if index in named:
                break
            cell = (exact, version, first & ~((1 << (bits - shorter)) - 1), shorter)
            if shorter >= length or cell not in cells:
                continue
            if cell not in sweeps:
                sweeps[cell] = _Sweep(cells[cell])
            other = sweeps[cell].meeting(low, high)
            if other is not None:
                named[index] = other
    return [(entries[named[index]], entries[index]) for index in sorted(named)]


def entries_that_may_overlap(ipset_type: str, entries: Iterable[str]) -> set[str]:
    """Canonical entries that may overlap another (`overlapping`), and at
    least all that do: those whose network nests with another's, with the
    same exact parts (without a network: whose ports meet another's)."""
    kinds = ipset_type.removeprefix("hash:").split(",")
    if "net" not in kinds and "port" not in kinds:
        return set()
    groups: dict[tuple[Any, ...], list[tuple[int, int, str]]] = {}
    for entry in set(entries):
        exact, (version, first, length, bits), ports = _span(kinds, entry)
        span = (first, first + (1 << (bits - length)) - 1) if "net" in kinds else ports
        groups.setdefault((exact, version), []).append((*span, entry))
    return {entry for spans in groups.values() for entry in meeting_another(spans)}


def _span(kinds: list[str], entry: str) -> tuple[tuple[str, ...], tuple[int, int, int, int], tuple[int, int]]:
    """A canonical entry as (its exact parts, its network as (version, first
    address, prefix length, bits), its ports as (first, last))."""
    exact: list[str] = []
    network, ports = (0, 0, 0, 0), (0, 0)
    for kind, part in zip(kinds, entry.split(","), strict=True):
        if kind == "net":
            address, _, length = part.partition("/")
            if IPV4_RE.fullmatch(address):
                network = (4, ipv4_value(address), int(length), 32)
            else:
                parsed = ipaddress.ip_network(part)
                network = (parsed.version, int(parsed.network_address), parsed.prefixlen, parsed.max_prefixlen)
        elif kind == "port":
            protocol, _, numbers = part.partition(":")
            low, _, high = numbers.partition("-")
            exact.append(protocol)
            ports = (int(low), int(high or low))
        else:
            exact.append(part)
    return tuple(exact), network, ports


class _Sweep:
    """One network's port spans (first, last, entry index) by first port, with
    the highest last port so far and where it is, for a binary search."""

    def __init__(self, found: list[tuple[int, int, int]]) -> None:
        found.sort()
        self.found = found
        self.lows = [low for low, _, _ in found]
        self.highest: list[int] = []
        self.widest: list[int] = []  # the position of the span that reaches highest
        for at, (_, high, _) in enumerate(found):
            if not self.highest or high > self.highest[-1]:
                self.highest.append(high)
                self.widest.append(at)
            else:
                self.highest.append(self.highest[-1])
                self.widest.append(self.widest[-1])

    def meeting(self, low: int, high: int) -> int | None:
        """The entry index of a span that meets low..high, or None."""
        at = bisect.bisect_right(self.lows, high) - 1  # found[: at + 1] start at or below high
        if at < 0 or self.highest[at] < low:
            return None
        return self.found[self.widest[at]][2]
