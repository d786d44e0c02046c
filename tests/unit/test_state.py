"""Ownership state: round trip, atomic writes, corrupt files, locking."""

import json
import os
import tempfile
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.model import DirectRule, ForwardPort, Item, Masquerade, Port, Scope, Service
from reconciler.state import State, StateStore, render

Z = Scope("zone", "public")


def test_missing_file_is_an_empty_state(tmp_path):
    assert StateStore(tmp_path / "state.json").load().owned == {}


def test_round_trip_every_field_type(tmp_path):
    store = StateStore(tmp_path / "sub" / "state.json")
    owned = {
        Service(Z, "http"): frozenset({"web", "api"}),
        Masquerade(Z): frozenset({"nat"}),
        ForwardPort(Z, "2222", "tcp", "22", ""): frozenset({"web"}),
        DirectRule("ipv4", "filter", "X", -3, ("-p", "tcp", "-j", "ACCEPT")): frozenset({"d"}),
    }
    placed = {Masquerade(Z): "firewalld"}
    store.save(State(owned=owned, pending={"policy": "web", "ops": ["+ x"]}, placed=placed))
    for loaded in (store.load(), StateStore(store.path).load()):  # remembered, and parsed from the file
        assert loaded.owned == owned
        assert loaded.placed == placed
        assert loaded.pending == {"policy": "web", "ops": ["+ x"]}
        assert loaded.owned_by("web") == {Service(Z, "http"), ForwardPort(Z, "2222", "tcp", "22", "")}
    assert oct((tmp_path / "sub").stat().st_mode & 0o777) == oct(0o700)


def test_file_is_plain_json_in_plan_order(tmp_path):
    store = StateStore(tmp_path / "state.json")
    rule = DirectRule("ipv4", "filter", "X", 0, ("-j", "ACCEPT"))
    store.save(State(owned={rule: frozenset({"b", "a"}), Service(Z, "ssh"): frozenset({"a"})}, placed={rule: "iptables"}))
    assert json.loads(store.path.read_text()) == {
        "version": 2,
        "owned": [
            {"item": {"kind": "service", "scope": ["zone", "public"], "name": "ssh"}, "policies": ["a"], "backend": None},
            {
                "item": {
                    "kind": "direct_rule",
                    "family": "ipv4",
                    "table": "filter",
                    "chain": "X",
                    "priority": 0,
                    "args": ["-j", "ACCEPT"],
                },
                "policies": ["a", "b"],
                "backend": "iptables",
            },
        ],
        "owned_groups": [],
        "held_by_others": [],
        "pending": None,
    }


def test_elements_and_entries_are_written_in_groups_by_set_owners_and_backend(tmp_path):
    from reconciler.model import IpsetEntry, NftElement

    store = StateStore(tmp_path / "state.json")
    one, two, three = (NftElement("inet", "block", f"192.0.2.{i}") for i in (3, 1, 2))
    entry = IpsetEntry("partners", "198.51.100.0/24")
    owned = {one: frozenset({"a"}), two: frozenset({"a"}), three: frozenset({"a", "b"}), entry: frozenset({"a"})}
    state = State(owned=owned, placed={one: "nftables", two: "nftables", three: "nftables", entry: "firewalld"})
    store.save(state)
    assert json.loads(store.path.read_text())["owned_groups"] == [
        {
            "of": {"kind": "ipset_entry", "ipset": "partners"},
            "policies": ["a"],
            "backend": "firewalld",
            "values": ["198.51.100.0/24"],
        },
        {
            "of": {"kind": "nft_element", "family": "inet", "set": "block"},
            "policies": ["a"],
            "backend": "nftables",
            "values": ["192.0.2.1", "192.0.2.3"],
        },
        {
            "of": {"kind": "nft_element", "family": "inet", "set": "block"},
            "policies": ["a", "b"],
            "backend": "nftables",
            "values": ["192.0.2.2"],
        },
    ]
    loaded = StateStore(store.path).load()
    assert (loaded.owned, loaded.placed) == (state.owned, state.placed)


def test_a_file_of_version_1_is_read_as_written(tmp_path):
    path = tmp_path / "state.json"
    element = {"kind": "nft_element", "family": "inet", "set": "block", "element": "192.0.2.1"}
    path.write_text(json.dumps({"version": 1, "owned": [{"item": element, "policies": ["a"], "backend": "nftables"}]}))
    state = StateStore(path).load()
    assert state.owned == {Item.from_json(element): frozenset({"a"})}
    assert state.placed == {Item.from_json(element): "nftables"}


def test_items_held_by_others_round_trip(tmp_path):
    store = StateStore(tmp_path / "state.json")
    bridge = Service(Z, "dhcp")
    store.save(State(others={bridge: frozenset({"lab", "a"})}))
    assert json.loads(store.path.read_text())["held_by_others"] == [
        {"item": {"kind": "service", "scope": ["zone", "public"], "name": "dhcp"}, "policies": ["a", "lab"]}
    ]
    assert StateStore(store.path).load().others == {bridge: frozenset({"a", "lab"})}


def test_load_sees_a_file_replaced_behind_its_back(tmp_path):
    store = StateStore(tmp_path / "state.json")
    store.save(State(owned={Service(Z, "http"): frozenset({"web"})}))
    assert store.load().owned == {Service(Z, "http"): frozenset({"web"})}
    StateStore(store.path).save(State(owned={Service(Z, "ssh"): frozenset({"web"})}))  # another writer
    assert store.load().owned == {Service(Z, "ssh"): frozenset({"web"})}


def test_changing_a_loaded_state_does_not_change_the_next_load(tmp_path):
    store = StateStore(tmp_path / "state.json")
    store.save(State(owned={Service(Z, "http"): frozenset({"web"})}, pending={"ops": ["+ x"]}))
    first = store.load()
    first.owned.clear()
    first.placed[Service(Z, "http")] = "firewalld"
    first.pending["ops"].append("+ y")
    second = store.load()
    assert second.owned == {Service(Z, "http"): frozenset({"web"})}
    assert second.placed == {} and second.pending == {"ops": ["+ x"]}


def test_saving_what_the_file_holds_writes_nothing(tmp_path):
    store = StateStore(tmp_path / "state.json")
    owned = {Service(Z, "http"): frozenset({"web"})}
    store.save(State(owned=dict(owned)))
    first = store.path.stat()
    store.save(State(owned=dict(owned)))  # equal: nothing to write
    assert store.path.stat().st_ino == first.st_ino
    store.save(State(owned=dict(owned), pending={"policy": "web"}))  # a change: written
    assert store.path.stat().st_ino != first.st_ino
    StateStore(store.path).save(State(owned=dict(owned)))  # another writer
    replaced = store.path.stat()
    store.save(State(owned=dict(owned)))  # the store cannot know what that wrote: writes
    assert store.path.stat().st_ino != replaced.st_ino


def test_save_leaves_no_temp_files(tmp_path):
    store = StateStore(tmp_path / "state.json")
    for _ in range(3):
        store.save(State(owned={Service(Z, "http"): frozenset({"web"})}))
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"version": 99, "owned": []}),
        json.dumps({"version": 1}),
        json.dumps({"version": 1, "owned": [{"item": {"kind": "nope"}, "policies": ["a"]}]}),
    ],
)
def test_corrupt_file_is_an_error_not_a_reset(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(StateError, match=r"state\.json"):
        StateStore(path).load()
    assert path.read_text() == content  # left alone for the operator


def test_unreadable_file_is_an_error(tmp_path):
    path = tmp_path / "state.json"
    path.mkdir()
    with pytest.raises(StateError, match="cannot read"):
        StateStore(path).load()


def test_lock_excludes_a_second_holder(tmp_path):
    first, second = StateStore(tmp_path / "s.json"), StateStore(tmp_path / "s.json")
    with first.locked(), pytest.raises(StateError, match="another fwrecon"), second.locked():
        pass
    with second.locked():
        pass


# -- any bytes: a State or "state file is corrupt (...)", never a traceback ---------------

ITEM = {"kind": "port", "scope": ["zone", "public"], "port": "80", "protocol": "tcp"}


def entry(item: object = ITEM, policies: object = None, **extra: object) -> dict:
    """One ``owned`` entry; any field may be given a wrong value."""
    return {"item": item, "policies": ["web"] if policies is None else policies, **extra}


SET = {"kind": "nft_element", "family": "inet", "set": "block"}


def group(of: object = None, values: object = None, policies: object = None) -> dict:
    """One ``owned_groups`` record; any field may be given a wrong value."""
    return {
        "of": SET if of is None else of,
        "policies": ["web"] if policies is None else policies,
        "values": ["192.0.2.1"] if values is None else values,
    }


def state_json(*entries: object, **top: object) -> bytes:
    """A state file's bytes, version 1, with these entries (and top-level keys overridden)."""
    return json.dumps({"version": 1, "owned": list(entries), "pending": None, **top}).encode()


def corrupt_message(path: Path, reason: str) -> str:
    return (
        f"{path}: state file is corrupt ({reason}); refusing to start with an empty state, "
        "which would forget the rules fwrecon owns. Repair or move the file away."
    )


def written_state() -> bytes:
    """A well-formed state file with one entry (cut short, it is a truncated one)."""
    return state_json(entry())


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"version": 1, "owned": [], "pending": "\xff"}', "not UTF-8 text: invalid start byte at byte 40"),
        (written_state()[:40], "not JSON: Unterminated string starting at: line 1 column 36 (char 35)"),
        (b"", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"version": 1, "owned": [], "pending": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001, "nested too deeply"),
        (b'{"version": 1, "owned": [], "pending": {"a": [[[[[[[[[1]]]]]]]]]}}', "'pending' is nested more than 8 levels deep"),
        (
            b"9" * 5000,
            "not JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; "
            "use sys.set_int_max_str_digits() to increase the limit",
        ),
        (b"[]", "expected a JSON object, got array"),
        (b"null", "expected a JSON object, got null"),
        (json.dumps({"version": True, "owned": []}).encode(), "unsupported version true"),
        (json.dumps({"version": 1.0, "owned": []}).encode(), "unsupported version 1.0"),
        (json.dumps({"version": 1}).encode(), "missing 'owned'"),
        (json.dumps({"version": 1, "owned": {}}).encode(), "'owned' must be an array, got object"),
        (state_json(pending=[]), "'pending' must be an object or null, got array"),
        (state_json("x"), "owned[0] must be an object, got string"),
        (state_json({"policies": ["web"]}), "owned[0]: missing 'item'"),
        (state_json(entry(policies=[])), "owned[0].policies must be a non-empty array of strings, got []"),
        (state_json(entry(policies="web")), 'owned[0].policies must be a non-empty array of strings, got "web"'),
        (state_json(entry(policies=[7])), "owned[0].policies must be a non-empty array of strings, got [7]"),
        (state_json(entry(backend=1)), "owned[0].backend must be a string or null, got integer"),
        (state_json(entry(), entry(policies=["api"])), "owned[1]: zone public port 80/tcp is listed twice"),
        (state_json(entry(item="port")), "owned[0].item: malformed item 'port': expected an object, got string"),
        (state_json(owned_groups={}), "'owned_groups' must be an array, got object"),
        (
            state_json(owned_groups=[group(values="x")]),
            "owned_groups[0] must be an object with an 'of' object and a 'values' array",
        ),
        (state_json(owned_groups=[group(of=ITEM)]), 'owned_groups[0].of: "port" is not a kind kept in groups'),
        (
            state_json(owned_groups=[group(of={**SET, "element": "x"})]),
            "owned_groups[0].of names 'element', which its values give",
        ),
        (
            state_json(owned_groups=[group(of={**SET, "set": 7})]),
            "owned_groups[0].of: malformed item {'kind': 'nft_element', 'family': 'inet', 'set': 7, 'element': ''}: "
            "field 'set': expected a string, got integer",
        ),
        (state_json(owned_groups=[group(values=["192.0.2.1", 1])]), "owned_groups[0].values[1] must be a string, got integer"),
        (state_json(owned_groups=[group(policies=[])]), "owned_groups[0].policies must be a non-empty array of strings, got []"),
        (
            state_json(owned_groups=[group(), group(policies=["api"])]),
            "owned_groups[1].values[0]: nft inet fwrecon set block element 192.0.2.1 is listed twice",
        ),
        (
            state_json(entry(item={**SET, "element": "192.0.2.1"}), owned_groups=[group()]),
            "owned_groups[0].values[0]: nft inet fwrecon set block element 192.0.2.1 is listed twice",
        ),
    ],
    ids=[
        "not-utf8",
        "truncated",
        "empty",
        "nested-arrays",
        "nested-pending",
        "deep-pending",
        "huge-int",
        "array",
        "null",
        "version-bool",
        "version-float",
        "no-owned",
        "owned-object",
        "pending-array",
        "entry-string",
        "no-item",
        "no-policies",
        "policies-string",
        "policies-int",
        "backend-int",
        "duplicate",
        "item-string",
        "groups-object",
        "group-values-string",
        "group-of-port",
        "group-of-names-element",
        "group-of-bad-field",
        "group-value-int",
        "group-no-policies",
        "group-duplicate",
        "group-duplicates-entry",
    ],
)
def test_corrupt_content_names_the_file_and_the_reason(tmp_path, content: bytes, reason: str):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError) as info:
        StateStore(path).load()
    assert str(info.value) == corrupt_message(path, reason)
    assert path.read_bytes() == content  # left alone for the operator


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({**ITEM, "port": 80}, "field 'port': expected a string, got integer"),
        ({**ITEM, "scope": "zone"}, "field 'scope': expected [\"zone\" or \"policy\", NAME], got 'zone'"),
        ({**ITEM, "scope": ["zone", 1]}, "field 'scope': expected [\"zone\" or \"policy\", NAME], got ['zone', 1]"),
        ({**ITEM, "scope": ["zone", "a", "b"]}, "field 'scope': expected [\"zone\" or \"policy\", NAME], got ['zone', 'a', 'b']"),
        ({**ITEM, "extra": "x"}, "unknown field 'extra'"),
        ({k: v for k, v in ITEM.items() if k != "protocol"}, "missing field 'protocol'"),
        ({**ITEM, "kind": ["port"]}, "unknown kind ['port']"),
        (
            {"kind": "direct_rule", "family": "ipv4", "table": "filter", "chain": "X", "priority": "5", "args": ["-j", "ACCEPT"]},
            "field 'priority': expected an integer, got string",
        ),
        (
            {
                "kind": "direct_rule",
                "family": "ipv4",
                "table": "filter",
                "chain": "X",
                "priority": True,
                "args": ["-j", "ACCEPT"],
            },
            "field 'priority': expected an integer, got boolean",
        ),
        (
            {"kind": "direct_rule", "family": "ipv4", "table": "filter", "chain": "X", "priority": 0, "args": "abc"},
            "field 'args': expected an array of strings, got 'abc'",
        ),
    ],
    ids=[
        "int-port",
        "scope-string",
        "scope-int-name",
        "scope-three",
        "extra-field",
        "missing-field",
        "kind-list",
        "priority-string",
        "priority-bool",
        "args-string",
    ],
)
def test_item_fields_of_the_wrong_json_type_are_corrupt_not_coerced(tmp_path, item: dict, reason: str):
    path = tmp_path / "state.json"
    path.write_bytes(state_json(entry(item)))
    with pytest.raises(StateError) as info:
        StateStore(path).load()
    message = str(info.value)
    assert message.startswith(f"{path}: state file is corrupt (owned[0].item: malformed item {{")
    assert f"}}: {reason}); refusing to start" in message


def test_file_over_the_size_cap_is_corrupt_and_not_read(tmp_path, monkeypatch):
    import reconciler.state as state_module

    path = tmp_path / "state.json"
    StateStore(path).save(State(owned={Service(Z, "http"): frozenset({"web"})}))
    size = path.stat().st_size
    monkeypatch.setattr(state_module, "MAX_STATE_FILE_BYTES", size - 1)

    def never(*args, **kwargs):
        raise AssertionError("a file over the cap was parsed")

    monkeypatch.setattr(state_module.json, "loads", never)
    with pytest.raises(StateError) as info:
        StateStore(path).load()
    assert str(info.value) == corrupt_message(path, f"{size} bytes, more than the {size - 1} bytes a state file may hold")


def test_default_state_size_cap_is_512_mib():
    from reconciler.state import MAX_STATE_FILE_BYTES

    assert MAX_STATE_FILE_BYTES == 512 * 2**20


def test_state_cap_holds_while_reading_a_file_that_grows(tmp_path, monkeypatch):
    """stat says 0 bytes but reading yields more: the read stops at the cap."""
    import reconciler.state as state_module

    source = Path("/proc/self/maps")
    if source.stat().st_size != 0 or len(source.read_bytes()) <= 128:
        pytest.skip("needs /proc/self/maps: a regular file that stat calls empty")
    monkeypatch.setattr(state_module, "MAX_STATE_FILE_BYTES", 128)
    path = tmp_path / "state.json"
    path.symlink_to(source)
    with pytest.raises(StateError) as info:
        StateStore(path).load()
    assert str(info.value) == corrupt_message(path, "more than the 128 bytes a state file may hold")


def test_entries_without_backend_or_pending_still_load(tmp_path):
    """Files written before ``backend`` and ``pending`` existed stay readable."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "owned": [{"item": ITEM, "policies": ["web"]}]}))
    state = StateStore(path).load()
    assert state.owned == {Port(Z, "80", "tcp"): frozenset({"web"})}
    assert state.placed == {} and state.pending is None


def test_unknown_top_level_and_entry_keys_are_ignored(tmp_path):
    """Room for a later minor addition; unknown fields inside an item are refused (see above)."""
    path = tmp_path / "state.json"
    path.write_bytes(state_json(entry(backend="firewalld", note="x"), comment="hand-edited"))
    state = StateStore(path).load()
    assert state.owned == {Port(Z, "80", "tcp"): frozenset({"web"})}
    assert state.placed == {Port(Z, "80", "tcp"): "firewalld"}


def test_a_render_reusing_the_last_ones_entries_is_the_same_text() -> None:
    from reconciler.model import NftElement
    from reconciler.state import render_entries

    a, b, c = (Port(Z, str(8000 + i), "tcp") for i in range(3))
    x, y = (NftElement("inet", "s", f"10.0.0.{i}") for i in range(2))
    state = State(
        owned={a: frozenset({"p"}), b: frozenset({"p"}), x: frozenset({"p"}), y: frozenset({"p"})},
        placed={a: "nftables", b: "nftables", x: "nftables", y: "nftables"},
    )
    _, entries = render_entries(state, {})
    changes = [
        lambda s: s.owned.__setitem__(x, frozenset({"p", "q"})),  # an element with another owner: a group of its own
        lambda s: s.placed.pop(y),
        lambda s: s.owned.__setitem__(a, frozenset({"p", "q"})),  # another owner
        lambda s: s.placed.__setitem__(b, "iptables"),  # another backend
        lambda s: s.placed.pop(b),  # none
        lambda s: s.owned.pop(a),  # gone
        lambda s: s.owned.__setitem__(c, frozenset({"q"})),  # new
    ]
    for change in changes:
        change(state)
        text, entries = render_entries(state, entries)
        assert text == render(state)
        assert set(entries) == {item for item, owners in state.owned.items() if owners and not isinstance(item, NftElement)}
        path = Path(tempfile.mkdtemp()) / "s.json"
        path.write_text(text)
        assert StateStore(path).load().owned == state.owned


def test_a_file_of_more_items_than_a_state_may_hold_is_refused_before_they_are_built(tmp_path, monkeypatch):
    import reconciler.state

    monkeypatch.setattr(reconciler.state, "MAX_STATE_ITEMS", 5)
    path = tmp_path / "state.json"
    path.write_bytes(state_json(entry(), owned_groups=[group(values=[f"192.0.2.{i}" for i in range(5)])]))
    with pytest.raises(StateError) as info:
        StateStore(path).load()
    assert str(info.value) == corrupt_message(path, "more than the 5 items a state file may hold")
    path.write_bytes(state_json(entry(), owned_groups=[group(values=[f"192.0.2.{i}" for i in range(4)])]))
    assert len(StateStore(path).load().owned) == 5


def test_a_state_of_more_items_than_a_file_may_hold_is_not_written(tmp_path, monkeypatch):
    import reconciler.state

    monkeypatch.setattr(reconciler.state, "MAX_STATE_ITEMS", 2)
    store = StateStore(tmp_path / "state.json")
    store.save(State(owned={Port(Z, "1", "tcp"): frozenset({"a"}), Port(Z, "2", "tcp"): frozenset({"a"})}))
    written = store.path.read_bytes()
    with pytest.raises(StateError, match="cannot write state file: 3 owned items, more than the 2 a state file may hold"):
        store.save(State(owned={Port(Z, str(n), "tcp"): frozenset({"a"}) for n in (1, 2, 3)}))
    assert store.path.read_bytes() == written
