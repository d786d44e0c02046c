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
    store.save(State(owned=owned, pending={"policy": "web", "ops": ["+ x"]}))
    loaded = store.load()
    assert loaded.owned == owned
    assert loaded.pending == {"policy": "web", "ops": ["+ x"]}
    assert loaded.owned_by("web") == {Service(Z, "http"), ForwardPort(Z, "2222", "tcp", "22", "")}
    assert oct((tmp_path / "sub").stat().st_mode & 0o777) == oct(0o700)


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
