"""Ownership state: round trip, atomic writes, corrupt files, locking."""

import json
import os

import pytest

from reconciler.errors import StateError
from reconciler.model import DirectRule, ForwardPort, Masquerade, Scope, Service
from reconciler.state import State, StateStore

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
        "version": 1,
        "owned": [
            {"item": {"kind": "service", "scope": ["zone", "public"], "name": "ssh"}, "policies": ["a"], "backend": None},
            {"item": {"kind": "direct_rule", "family": "ipv4", "table": "filter", "chain": "X", "priority": 0,
                      "args": ["-j", "ACCEPT"]}, "policies": ["a", "b"], "backend": "iptables"},
        ],
        "held_by_others": [],
        "pending": None,
    }


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
    ["{not json", json.dumps({"version": 99, "owned": []}), json.dumps({"version": 1}),
     json.dumps({"version": 1, "owned": [{"item": {"kind": "nope"}, "policies": ["a"]}]})],
)
def test_corrupt_file_is_an_error_not_a_reset(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(StateError, match="state.json"):
        StateStore(path).load()
    assert path.read_text() == content  # left alone for the operator


def test_unreadable_file_is_an_error(tmp_path):
    path = tmp_path / "state.json"
    path.mkdir()
    with pytest.raises(StateError, match="cannot read"):
        StateStore(path).load()


def test_lock_excludes_a_second_holder(tmp_path):
    first, second = StateStore(tmp_path / "s.json"), StateStore(tmp_path / "s.json")
    with first.locked():
        with pytest.raises(StateError, match="another fwrecon"):
            with second.locked():
                pass
    with second.locked():
        pass
