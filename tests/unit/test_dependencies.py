"""What ``pip install shardkit`` asks for: ranges in pyproject.toml, one tested set in
constraints.txt, and the local cloud's moto kept out of the core."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shardkit.local import compat

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {
    extra: [Requirement(r) for r in reqs]
    for extra, reqs in PROJECT["optional-dependencies"].items()
}


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, pinned = line.partition("==")
            assert sep and pinned.strip(), f"constraints.txt: {line!r} is not name==version"
            found[canonicalize_name(name)] = pinned.strip()
    return found


def test_the_core_takes_ranges_not_pins() -> None:
    for req in CORE:
        assert not any(spec.operator in ("==", "===") for spec in req.specifier), req
        assert any(spec.operator == ">=" for spec in req.specifier), f"{req}: state a floor"


def test_the_local_cloud_is_an_extra() -> None:
    core = {canonicalize_name(r.name) for r in CORE}
    assert not core & {"moto", "flask", "flask-cors", "matplotlib", "cfn-lint", "pytest"}, core
    assert "moto" in {r.name for r in EXTRAS["local"]}
    (itself,) = [r for r in EXTRAS["dev"] if r.name == "shardkit"]
    assert itself.extras == {"local", "sim"}


@pytest.mark.parametrize(
    "req",
    CORE + [r for reqs in EXTRAS.values() for r in reqs if r.name != "shardkit"],
    ids=str,
)
def test_constraints_txt_pins_every_requirement_inside_its_range(req: Requirement) -> None:
    pinned = pins().get(canonicalize_name(req.name))
    assert pinned is not None, f"constraints.txt does not pin {req.name}"
    assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned} vs {req}"


def test_the_tested_set_is_a_pair_the_local_cloud_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV, raising=False)
    tested = pins()
    assert compat.check(tested.get) == {"moto": tested["moto"], "botocore": tested["botocore"]}


def test_the_declared_floors_are_the_checked_floors() -> None:
    """pyproject's moto floor (local extra) and botocore floor (core) start compat.TESTED."""
    declared = {r.name: r for r in CORE + EXTRAS["local"]}
    for name, (floor, _) in compat.TESTED.items():
        (spec,) = [s for s in declared[name].specifier if s.operator == ">="]
        assert compat.release(spec.version) == floor, (name, spec)
