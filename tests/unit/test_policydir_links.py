"""Policy directories that other tools manage: symlinked policy files are
judged by where they lead, a Kubernetes ConfigMap layout (kubelet's
AtomicWriter) is read as one version, and a swap while reading is read again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kubelet_writer import AtomicWriter

import reconciler.policydir as policydir
from reconciler.model import Port, Scope
from reconciler.policydir import load_policy_dir

PUBLIC = Scope("zone", "public")


def policy(port: int) -> str:
    return f'[zone.public]\nports = ["{port}/tcp"]\n'


def ports(result) -> dict[str, set[str]]:
    return {name: {item.port for item in p.items if isinstance(item, Port)} for name, p in result.policies.items()}


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    directory = tmp_path / "policies.d"
    directory.mkdir(mode=0o755)
    return directory


def test_a_configmap_volume_is_read_through_its_links(volume: Path) -> None:
    writer = AtomicWriter(volume)
    writer.write({"web.toml": policy(80), "db.toml": policy(5432)})
    assert (volume / "web.toml").is_symlink()
    result = load_policy_dir(volume)
    assert result.errors == {} and ports(result) == {"web": {"80"}, "db": {"5432"}}
    writer.write({"web.toml": policy(81)})
    result = load_policy_dir(volume)
    assert result.errors == {} and ports(result) == {"web": {"81"}}  # db's visible name went with it


def test_a_link_is_refused_when_its_target_is_writable_by_others(volume: Path) -> None:
    version = AtomicWriter(volume).write({"web.toml": policy(80)}, mode=0o666)
    (error,) = load_policy_dir(volume).errors["web"]
    assert str(error) == (
        f"web.toml: refusing file {version}/web.toml (the link's target) writable by group or others (mode 666); chmod go-w it"
    )


def test_a_link_is_refused_when_a_directory_on_the_way_is_writable_by_others(volume: Path) -> None:
    version = AtomicWriter(volume).write({"web.toml": policy(80)})
    version.chmod(0o777)  # anyone could swap web.toml inside the published version
    (error,) = load_policy_dir(volume).errors["web"]
    assert f"refusing directory {version} (on the way to the link's target) writable by group or others (mode 777)" in str(error)


def test_a_link_to_a_file_elsewhere_is_judged_up_to_the_root(tmp_path: Path, volume: Path) -> None:
    shelf = tmp_path / "shelf" / "inner"
    shelf.mkdir(parents=True)
    (shelf / "web.toml").write_text(policy(80))
    (shelf / "web.toml").chmod(0o644)
    (volume / "web.toml").symlink_to(shelf / "web.toml")
    # every directory up to / is safe (tmp_path's own are below the sticky /tmp)
    assert ports(load_policy_dir(volume)) == {"web": {"80"}}
    (tmp_path / "shelf").chmod(0o777)  # not sticky: anyone could rename 'inner' away and put another there
    (error,) = load_policy_dir(volume).errors["web"]
    assert f"refusing directory {tmp_path / 'shelf'} (on the way to the link's target) writable by group or others" in str(error)
    (tmp_path / "shelf").chmod(0o1777)  # sticky: only the owner of 'inner' may rename it
    assert ports(load_policy_dir(volume)) == {"web": {"80"}}


def test_a_link_held_in_a_directory_others_can_write_is_refused_even_when_sticky(tmp_path: Path, volume: Path) -> None:
    """A link's own directory decides where it leads: sticky does not help, the link's owner could swap it."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "real.toml").write_text(policy(80))
    (drop / "real.toml").chmod(0o644)
    (drop / "hop.toml").symlink_to(drop / "real.toml")
    (volume / "web.toml").symlink_to(drop / "hop.toml")
    assert ports(load_policy_dir(volume)) == {"web": {"80"}}
    drop.chmod(0o1777)
    (error,) = load_policy_dir(volume).errors["web"]
    assert f"refusing directory {drop} (on the way to the link's target) writable by group or others (mode 1777)" in str(error)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_link_to_a_file_of_another_user_is_refused(volume: Path) -> None:
    version = AtomicWriter(volume).write({"web.toml": policy(80)})
    os.chown(version / "web.toml", 12345, 12345)
    (error,) = load_policy_dir(volume).errors["web"]
    assert f"refusing file {version}/web.toml (the link's target) owned by uid 12345" in str(error)


def test_a_dangling_link_costs_only_its_policy(volume: Path) -> None:
    AtomicWriter(volume).write({"web.toml": policy(80)})
    (volume / "gone.toml").symlink_to("..data/gone.toml")
    result = load_policy_dir(volume)
    assert ports(result) == {"web": {"80"}} and "does not exist" in str(result.errors["gone"][0])


def test_a_swap_while_reading_is_read_again_so_no_reconcile_mixes_two_versions(
    volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = AtomicWriter(volume)
    writer.write({"a.toml": policy(1), "b.toml": policy(1)})
    real = policydir.load_policy_file
    swapped = []

    def load_then_swap(path: Path, cache=None):  # kubelet publishes version 2 right after the first file was read
        loaded = real(path, cache)
        if not swapped:
            swapped.append(path.name)
            writer.write({"a.toml": policy(2), "b.toml": policy(2)})
        return loaded

    monkeypatch.setattr(policydir, "load_policy_file", load_then_swap)
    result = load_policy_dir(volume)
    assert ports(result) == {"a": {"2"}, "b": {"2"}}, "one version, the new one"


def test_a_read_only_mount_lifts_the_mode_rule_but_not_the_owner_rule(volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(The real read-only mount: tests/integration/test_kubernetes.py.)"""
    AtomicWriter(volume).write({"web.toml": policy(80)})
    volume.chmod(0o777)
    assert "writable by group or others" in str(load_policy_dir(volume).errors[str(volume)][0])
    monkeypatch.setattr(policydir, "_read_only_mount", lambda path: True)
    assert ports(load_policy_dir(volume)) == {"web": {"80"}}
