"""`tomllib.loads`, quicker for long arrays of plain strings.

tomllib is pure Python: the 100,000 addresses of a large set cost it
0.15-0.4 s, most of a policy file's parse.  Each long array of plain strings
(no escapes, no comments, no control characters inside) is cut out of the
text by one regular expression, a token string unique to this call is put in
its place, and tomllib parses the rest; each token is then replaced by the
array's strings.

The answer is tomllib's own.  A token found as a whole value proves that its
array stood where a value belongs: the text before it is the same, so tomllib
expected a value there, and the array is valid TOML whose value is its
strings as written.  If a token is not found so (its array sat in a
multi-line string or a comment) or the shortened text fails to parse, the
whole text goes to tomllib as it is, errors and all.
"""

from __future__ import annotations

import re
import secrets
import tomllib
from typing import Any

MIN_STRINGS = 64  # shorter arrays cost tomllib less than a detour would save

_WS = r"(?:[ \t\n]|\r\n)*"  # TOML's whitespace and newlines inside an array
_PLAIN = r'"[^"\\\x00-\x1f\x7f]*"'  # a basic string whose value is its text
_LONG_ARRAY = re.compile(rf"\[(?:{_WS}{_PLAIN}{_WS},){{{MIN_STRINGS - 1},}}{_WS}(?:{_PLAIN}{_WS})?\]")
_BODY = re.compile(r'"([^"]*)"')


def loads(text: str) -> dict[str, Any]:
    """What ``tomllib.loads(text)`` returns or raises."""
    arrays: dict[str, list[str]] = {}
    prefix = f"fwrecon-array-{secrets.token_hex(16)}-"

    def token(match: re.Match[str]) -> str:
        name = f"{prefix}{len(arrays)}"
        arrays[name] = _BODY.findall(match.group())
        return f'"{name}"'

    shortened = _LONG_ARRAY.sub(token, text)
    if not arrays:
        return tomllib.loads(text)
    try:
        data = tomllib.loads(shortened)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        return tomllib.loads(text)
    if _put_back(data, arrays) != len(arrays):
        return tomllib.loads(text)
    return data


def _put_back(data: dict[str, Any], arrays: dict[str, list[str]]) -> int:
    """Replace each token value in ``data`` by its array; how many were found."""
    found = 0
    pending: list[dict[Any, Any] | list[Any]] = [data]
    while pending:
        node = pending.pop()
        slots: dict[Any, Any] = node if isinstance(node, dict) else dict(enumerate(node))
        for key, value in slots.items():
            if isinstance(value, str):
                strings = arrays.get(value)
                if strings is not None:
                    node[key] = strings
                    found += 1
            elif isinstance(value, (dict, list)):
                pending.append(value)
    return found
