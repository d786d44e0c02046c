"""nft set elements: one canonical text each, the one nft itself prints.

A policy's ``elements`` and the elements ``nft -j list table`` reports must
compare equal as strings, or every plan would churn: so an element is
normalised here the way nft prints it (IPv6 as libc's ``inet_ntop`` writes it,
a /32 as the address, a range that is exactly a network as the network, a
one-value range as the value, MACs in lower case, ports as numbers).
Pure: no I/O, no backend imports.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

# The element types fwrecon manages (nft(8) "SETS"); concatenations and the
# other types are left to hand-made sets.
SET_TYPES = ("ipv4_addr", "ipv6_addr", "inet_service", "ether_addr")
# Flags a policy may give a set.  Without "interval" a set holds single values.
SET_FLAGS = ("interval", "timeout")
REFUSED_FLAGS = {
    "constant": "a constant set cannot change while a rule uses it, and fwrecon edits elements one by one",
    "auto-merge": "nft would merge elements into forms no policy wrote, so the plan would never settle",
    # (nft 1.0.6 does not list it back for hash sets: the set would never look like the policy's)
    "dynamic": "nft does not report it back, so fwrecon could not tell its set is there",
}
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_PORT_RE = re.compile(r"\d{1,5}")
_BITS = {"ipv4_addr": 32, "ipv6_addr": 128}
# A dotted quad as nft and firewalld print it (no leading zeros): the common element, judged
# without ipaddress, which costs 10 us an address (a second for 100,000).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def canonical_element(set_type: str, interval: bool, text: str) -> str:
    """``text`` (as a policy writes it) in nft's printed form; ValueError says why not."""
    text = text.strip()
    if set_type == "ipv4_addr" and IPV4_RE.fullmatch(text):
        return text
    if set_type == "ether_addr":
        mac = text.lower().replace("-", ":")
        if not _MAC_RE.fullmatch(mac):
            raise ValueError(f"{text!r} is not a MAC address (six hex pairs separated by ':')")
        return mac
    low, high = _bounds(set_type, text)
    if low != high and not interval:
        raise ValueError(f'{text!r} is a range or network: the set needs flags = ["interval"]')
    return _text(set_type, low, high)


def listed_element(set_type: str, value: Any) -> str | None:
    """An element of ``nft -j`` output in the same form, or None when it is
    not a plain element of a type fwrecon manages (a concatenation, a
    verdict map entry): such an element is someone else's and never ours."""
    if type(value) is str and set_type == "ipv4_addr" and IPV4_RE.fullmatch(value):
        return value  # the common case, as nft prints it
    if isinstance(value, dict) and set(value) == {"elem"} and isinstance(value["elem"], dict):
        value = value["elem"].get("val")  # an element with a timeout or counter
    try:
        if set_type == "ether_addr":
            return canonical_element(set_type, False, value) if isinstance(value, str) else None
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            low, high = _bounds(set_type, str(value))
        elif isinstance(value, dict) and set(value) == {"prefix"} and isinstance(value["prefix"], dict):
            prefix = value["prefix"]
            low, high = _bounds(set_type, f"{prefix.get('addr')}/{prefix.get('len')}")
        elif isinstance(value, dict) and set(value) == {"range"} and isinstance(value["range"], list):
            first, last = value["range"] if len(value["range"]) == 2 else (None, None)
            low, high = _bounds(set_type, f"{first}-{last}")
        else:
            return None
    except ValueError:
        return None
    return _text(set_type, low, high)


def conflicts(set_type: str, elements: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of canonical elements of an interval set that overlap (nft
    refuses them: "conflicting intervals specified"), each later one once."""
    if set_type not in _BITS and set_type != "inet_service":
        return []
    spans = sorted((_bounds(set_type, element), element) for element in elements)
    found: list[tuple[str, str]] = []
    widest: tuple[int, str] | None = None  # the highest end so far and its element
    for (low, high), element in spans:
        if widest is not None and low <= widest[0]:
            found.append((widest[1], element))
        if widest is None or high > widest[0]:
            widest = (high, element)
    return found


def overlapping_elements(set_type: str, elements: Iterable[str]) -> set[str]:
    """The canonical elements that overlap at least one other: the only ones
    a check for overlaps across policies needs to look at (`conflicts`
    pairs each overlap once, not every element in one)."""
    if set_type not in _BITS and set_type != "inet_service":
        return set()
    return meeting_another([(*_bounds(set_type, element), element) for element in set(elements)])


def meeting_another(spans: list[tuple[int, int, str]]) -> set[str]:
    """Of ``spans`` (first, last, name), the names of those that meet another:
    sorted by first value, a span meets an earlier one when it starts at or
    before the highest end so far, and a later one when the next starts at
    or before its own end.  O(n log n)."""
    spans.sort()
    found: set[str] = set()
    highest = -1
    for at, (low, high, name) in enumerate(spans):
        if (at and low <= highest) or (at + 1 < len(spans) and spans[at + 1][0] <= high):
            found.add(name)
        highest = max(highest, high)
    return found


def _bounds(set_type: str, text: str) -> tuple[int, int]:
    """The first and last value ``text`` covers: one value, NET/LEN or FIRST-LAST."""
    if set_type == "inet_service":
        first, dash, last = text.partition("-")
        values = [_port(first), _port(last) if dash else _port(first)]
    elif set_type in _BITS:
        values = _address_bounds(set_type, text)
    else:
        raise ValueError(f"unknown set type {set_type!r}")
    if values[0] > values[1]:
        raise ValueError(f"{text!r} is a range whose first value is above its last")
    return values[0], values[1]


def _port(text: str) -> int:
    text = text.strip()
    if not _PORT_RE.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"{text!r} is not a port number 0-65535 (service names are not resolved)")
    return int(text)


def _address_bounds(set_type: str, text: str) -> list[int]:
    if set_type == "ipv4_addr" and IPV4_RE.fullmatch(text):
        value = ipv4_value(text)
        return [value, value]
    address, slash, length = text.partition("/")
    if set_type == "ipv4_addr" and slash and IPV4_RE.fullmatch(address) and length.isdigit() and int(length) <= 32:
        size = 1 << (32 - int(length))
        low = ipv4_value(address) & ~(size - 1)  # host bits dropped, as nft does
        return [low, low + size - 1]
    if "%" in text:  # ipaddress takes a scope ("fe80::1%eth0"); nft does not
        raise ValueError(f"{text!r} is not an IPv{4 if set_type == 'ipv4_addr' else 6} address, network or range")
    version = 4 if set_type == "ipv4_addr" else 6
    what = f"an IPv{version} address, network or range"
    try:
        if "/" in text:
            network = ipaddress.ip_network(text.strip(), strict=False)
            if network.version != version:
                raise ValueError(f"{text!r} is not {what}")
            return [int(network.network_address), int(network.broadcast_address)]
        first, dash, last = text.partition("-")
        addresses = [ipaddress.ip_address(first.strip()), ipaddress.ip_address((last if dash else first).strip())]
    except ValueError:
        raise ValueError(f"{text!r} is not {what}") from None
    if any(address.version != version for address in addresses):
        raise ValueError(f"{text!r} is not {what}")
    return [int(address) for address in addresses]


def _text(set_type: str, low: int, high: int) -> str:
    """nft's text for the values low..high: one value, a network, or a range."""
    if set_type == "inet_service":
        return str(low) if low == high else f"{low}-{high}"
    bits = _BITS[set_type]
    if low == high:
        return _address(set_type, low)
    size = high - low + 1
    if size & (size - 1) == 0 and low % size == 0:
        return f"{_address(set_type, low)}/{bits - size.bit_length() + 1}"
    return f"{_address(set_type, low)}-{_address(set_type, high)}"


def ipv4_value(text: str) -> int:
    a, b, c, d = map(int, text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _address(set_type: str, value: int) -> str:
    if set_type == "ipv4_addr":
        return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    # nft prints with inet_ntop, whose forms (e.g. "::ffff:192.0.2.1") Python's differ from.
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
