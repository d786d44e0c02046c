"""Packaging says what is true: the license, the dependency ranges the
constraint files test at both ends, a build without warnings, the version.

contrib/test runs these (with the other unit tests) in .venv, pinned by
constraints/ci.txt, and again in .venv-lowest, pinned by constraints/lowest.txt.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from prereq import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared() -> list[Requirement]:
    """Every requirement pyproject declares: dependencies and every extra."""
    project = PYPROJECT["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts.extend(extra)
    return [Requirement(text) for text in texts]


def pins(name: str) -> dict[str, str]:
    """``package -> version`` of a constraints file (normalised names)."""
    found = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            found[normal(requirement.name)] = spec.version
    return found


def normal(name: str) -> str:
    return name.lower().replace("_", "-")


def test_every_dependency_has_a_lower_and_an_upper_bound() -> None:
    for requirement in declared():
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and "<" in operators, requirement


def test_lowest_constraints_are_the_declared_lower_bounds() -> None:
    lowest = pins("lowest.txt")
    for requirement in declared():
        (bound,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        pinned = lowest.get(normal(requirement.name))
        assert pinned is not None, f"{requirement.name} is missing from constraints/lowest.txt"
        # the pin is the bound itself (2.20 and 2.20.0 are one version)
        assert requirement.specifier.contains(pinned) and Requirement(f"x=={bound}").specifier.contains(pinned), (
            requirement,
            pinned,
        )
    assert set(lowest) == {normal(r.name) for r in declared()}


def test_ci_constraints_satisfy_the_declared_ranges() -> None:
    ci = pins("ci.txt")
    for requirement in declared():
        pinned = ci.get(normal(requirement.name))
        assert pinned is not None, f"{requirement.name} is missing from constraints/ci.txt"
        assert requirement.specifier.contains(pinned), (requirement, pinned)


def test_license_is_an_spdx_expression_with_its_file() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    # SPDX expressions need setuptools 77 (PEP 639); older ones warn or refuse
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


def test_version_flags_print_the_version() -> None:
    expected = f"fwrecon {PYPROJECT['project']['version']}"
    for flag in ("--version", "-V"):
        result = subprocess.run([sys.executable, "-m", "reconciler", flag], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0 and result.stdout.strip() == expected, (flag, result)


def test_sdist_and_wheel_build_without_warnings(tmp_path: Path) -> None:
    try:
        import build  # noqa: F401
    except ImportError:
        skip_or_fail("the build check needs the 'build' package (pip install -e '.[dev]')")
    # PYTHONDONTWRITEBYTECODE (set on some machines) makes setuptools warn that
    # it skips byte-compiling: a warning about the machine, not the package.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if "warn" in line.lower() or "deprecat" in line.lower()]
    assert not warnings, "\n".join(warnings)
    (wheel,) = tmp_path.glob("*.whl")
    (sdist,) = tmp_path.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert sdist.name.startswith("firewall_reconciler-")


def test_test_modules_have_unique_basenames() -> None:
    """pytest imports test modules by basename (rootdir, no packages): a
    second tests/*/test_x.py stops the whole run at collection."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
