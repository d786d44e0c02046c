"""Port range rules, checked against what firewalld 1.3 did in the sandbox."""

import pytest

from reconciler.ports import add_range, canonical_port, covers, parse_range, remove_range


@pytest.mark.parametrize("text,expected", [("80", "80"), ("9000-9000", "9000"), (" 1-65535 ", "1-65535")])
def test_canonical(text, expected):
    assert canonical_port(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "90-80", "abc", "", "1-2-3", "-5"])
def test_invalid(text):
    with pytest.raises(ValueError):
        parse_range(text)


def test_add_merges_overlaps_like_firewalld():
    # firewall-cmd: 8080, 8081 then 8079-8085 -> "8079-8085"
    assert add_range(frozenset({(8080, 8080), (8081, 8081)}), (8079, 8085)) == {(8079, 8085)}
    # 100-200 then 150-250 -> "100-250"
    assert add_range(frozenset({(100, 200)}), (150, 250)) == {(100, 250)}
    # adjacent ranges stay apart
    assert add_range(frozenset({(80, 80)}), (81, 81)) == {(80, 80), (81, 81)}
    # covered: unchanged (firewalld says ALREADY_ENABLED)
    assert add_range(frozenset({(1, 100)}), (5, 6)) == {(1, 100)}


def test_remove_splits_like_firewalld():
    # 50-400 minus 60-70 -> 50-59, 71-400
    assert remove_range(frozenset({(50, 400)}), (60, 70)) == {(50, 59), (71, 400)}
    # 55-75 is not wholly covered any more: NOT_ENABLED, nothing changes
    state = frozenset({(50, 59), (71, 400)})
    assert remove_range(state, (55, 75)) == state


def test_covers():
    assert covers({(1, 10)}, (3, 4))
    assert not covers({(1, 10), (11, 20)}, (9, 12))
