"""`tomlarrays.loads` answers exactly as `tomllib.loads`: the same document or
the same error, for long arrays wherever they stand (values, nested, inline
tables, multi-line strings, comments) and for random text."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from test_adversarial import bounded

from reconciler import tomlarrays
from reconciler.tomlarrays import MIN_STRINGS, loads


def outcome(parse: Any, text: str) -> tuple[Any, ...]:
    try:
        return ("document", parse(text))
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        return ("error", type(exc), str(exc))


def array(strings: list[str], *, raw: bool, sep: str = ", ") -> str:
    """``raw``: each string between quotes as it is (plain, or invalid TOML); else escaped."""
    return "[" + sep.join(f'"{s}"' if raw else json.dumps(s, ensure_ascii=False) for s in strings) + "]"


PLAIN = st.text(alphabet=st.sampled_from(["a", "1", ".", "/", ":", "é", "#", "[", "]", ",", " ", "'"]), max_size=6)
ODD = st.sampled_from(['"', "\\", "\\n", "\t", "\n", "\r", "\r\n", "\x00", "\x1f", "\x7f", "\f", "\u2028"])


@st.composite
def string_lists(draw: st.DrawFn) -> list[str]:
    """Long lists of plain strings, now and then with one odd string among them."""
    strings = draw(st.lists(PLAIN, min_size=MIN_STRINGS - 2, max_size=MIN_STRINGS + 8))
    odd = draw(st.none() | ODD)
    if odd is not None:
        strings.insert(draw(st.integers(0, len(strings))), odd)
    return strings


PLACES = [
    "a = {}",
    "a = {}\nb = 1",
    "[[nft.set]]\nelements = {}\n[[nft.set]]\nelements = {}",
    "n = [{}, {}]",
    "t = {{ k = {} }}",
    "s = '''\nx = {}\n'''",
    's = """\n{}\n"""',
    "# {}\na = 1",
    "{}",  # where a key belongs: invalid
    "a = {}\na = 2",  # a duplicate key: invalid
    "a = {} 3",  # junk after the value: invalid
]


@bounded(300)
@given(
    place=st.sampled_from(PLACES),
    strings=string_lists(),
    raw=st.booleans(),
    sep=st.sampled_from([", ", ",", ",\n  ", " ,\r\n", ",\r", ", # note\n", ",\f"]),
)
def test_a_document_with_long_arrays_parses_as_tomllib_parses_it(place: str, strings: list[str], raw: bool, sep: str) -> None:
    text = place.format(*[array(strings, raw=raw, sep=sep)] * place.count("{}"))
    assert outcome(loads, text) == outcome(tomllib.loads, text)


@bounded(300)
@given(st.text(max_size=400))
@example('a = ["' + '", "'.join(["x"] * MIN_STRINGS) + '"]')
@example('a = """["' + '", "'.join(["x"] * MIN_STRINGS) + '"]"""')
def test_random_text_parses_as_tomllib_parses_it(text: str) -> None:
    assert outcome(loads, text) == outcome(tomllib.loads, text)


def test_tomllib_never_sees_the_long_array(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = tomllib.loads

    def spy(text: str) -> dict[str, Any]:
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(tomlarrays.tomllib, "loads", spy)
    elements = [f"10.0.{i // 256}.{i % 256}" for i in range(10000)]
    text = f'[[nft.set]]\nfamily = "inet"\nelements = {json.dumps(elements)}\n'
    assert loads(text) == {"nft": {"set": [{"family": "inet", "elements": elements}]}}
    assert seen and max(seen) < 200  # the array went around tomllib


def test_a_token_written_into_the_file_is_only_a_string() -> None:
    """The tokens carry a nonce of this call: text that imitates one stays text."""
    long = array(["x"] * MIN_STRINGS, raw=True)
    text = f'a = {long}\nb = "fwrecon-array-0-0"\n'
    assert loads(text) == {"a": ["x"] * MIN_STRINGS, "b": "fwrecon-array-0-0"}
