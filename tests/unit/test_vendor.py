"""The AWS code package carries the data plane's dependency wheels for the Lambda platform."""

from __future__ import annotations

import io
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from shardkit.config import load_project
from shardkit.deploy.package import build_package
from shardkit.deploy.vendor import RUNTIME_REQUIREMENTS, fetch_wheels, platform_for, wheel_files
from shardkit.errors import DeployError

ROOT = Path(__file__).resolve().parents[2]


def _wheel(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


class FakePip:
    """Plays `pip download`: records the command and drops one wheel per pin into --dest."""

    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, cmd: list[str], **kwargs: Any) -> Any:
        self.calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        for pin in (c for c in cmd if "==" in c):
            name = pin.split("==")[0].replace("-", "_")
            _wheel(
                dest / f"{name}-1-cp312-abi3-manylinux2014_aarch64.whl",
                {f"{name}/__init__.py": b"x = 1\n", f"{name}/_ext.so": b"\x7fELF"},
            )

        class Result:
            returncode = self.returncode
            stderr = "ERROR: No matching distribution found for msgpack==9.9"

        return Result()


def test_wheels_are_pinned_to_the_installed_versions_for_the_lambda_platform(
    tmp_path: Path,
) -> None:
    pip = FakePip()
    wheels = fetch_wheels("python3.12", "arm64", cache=tmp_path, run=pip)
    (cmd,) = pip.calls
    assert cmd[cmd.index("--platform") + 1] == "manylinux2014_aarch64"
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in cmd
    assert {c for c in cmd if "==" in c} == {f"{n}=={version(n)}" for n in RUNTIME_REQUIREMENTS}
    assert len(wheels) == len(RUNTIME_REQUIREMENTS)
    assert fetch_wheels("python3.12", "arm64", cache=tmp_path, run=pip) == wheels
    assert len(pip.calls) == 1  # the same set of versions is fetched once


def test_a_failed_download_is_a_clear_error_and_caches_nothing(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="No matching distribution found"):
        fetch_wheels("python3.12", "x86_64", cache=tmp_path, run=FakePip(returncode=1))
    assert not list(tmp_path.glob("*/COMPLETE"))


def test_an_unknown_architecture_is_refused() -> None:
    with pytest.raises(DeployError, match="unknown Lambda architecture 'ppc64'"):
        platform_for("ppc64")


def test_the_package_with_dependencies_is_reproducible(tmp_path: Path) -> None:
    wheels = fetch_wheels("python3.12", "arm64", cache=tmp_path, run=FakePip())
    deps = wheel_files(wheels)
    project = load_project(ROOT / "examples" / "quickstart")
    first, second = build_package(project, deps), build_package(project, deps)
    assert first.sha256 == second.sha256 and first.data == second.data
    assert "msgpack/_ext.so" in first.files and "shardkit/proxy/handler.py" in first.files
    assert build_package(project).sha256 != first.sha256
    with zipfile.ZipFile(io.BytesIO(first.data)) as zf:
        assert zf.getinfo("msgpack/_ext.so").external_attr >> 16 == 0o755
        assert zf.getinfo("shardkit/errors.py").external_attr >> 16 == 0o644


def _autoshard_project(tmp_path: Path) -> Any:
    """A copy of the quickstart with an autoshard policy and a key pair."""
    import shutil

    from shardkit.keys import create_key

    root = tmp_path / "proj"
    shutil.copytree(ROOT / "examples" / "quickstart", root)
    with (root / "shardkit.toml").open("a") as f:
        f.write("\n[groups.eu.autoshard]\ntarget_rps = 10.0\n")
    project = load_project(root)
    create_key(project.config.signing.key_id, project.keys_dir)
    return project


def test_an_autoshard_package_carries_the_project_but_no_private_key(tmp_path: Path) -> None:
    import json

    project = _autoshard_project(tmp_path)
    package = build_package(project)
    key_id = project.config.signing.key_id
    project_files = sorted(f for f in package.files if f.startswith("_project/"))
    assert project_files == [
        f"_project/.shardkit/keys/{key_id}.pub",
        "_project/manifest.json",
        "_project/shardkit.toml",
    ]
    assert not [f for f in package.files if f.endswith(".key")]
    with zipfile.ZipFile(io.BytesIO(package.data)) as zf:
        manifest = json.loads(zf.read("_project/manifest.json"))
    assert manifest["key_id"] == key_id and manifest["code"] == "app"
    assert set(manifest["files"]) == {
        "shardkit.toml",
        f".shardkit/keys/{key_id}.pub",
        *(f for f in package.files if f.startswith("app/")),
    }


def test_a_package_built_again_from_its_unpacked_self_is_the_same(tmp_path: Path) -> None:
    """The controller function deploys with the package it runs from: its task root's vendored
    files, the project it carries, the same shardkit - so its deploys change no code."""
    from shardkit.deploy.package import installed_dependencies

    project = _autoshard_project(tmp_path)
    deps = wheel_files(fetch_wheels("python3.12", "arm64", cache=tmp_path / "w", run=FakePip()))
    package = build_package(project, deps)
    task = tmp_path / "task"
    zipfile.ZipFile(io.BytesIO(package.data)).extractall(task)
    found = installed_dependencies(task, "app")
    assert found == deps
    assert build_package(project, found).sha256 == package.sha256


def test_an_autoshard_package_vendors_what_the_controller_imports(tmp_path: Path) -> None:
    from shardkit.deploy.vendor import CONTROL_REQUIREMENTS, requirements

    pip = FakePip()
    fetch_wheels("python3.12", "arm64", cache=tmp_path, run=pip, names=requirements(True))
    pins = {c.split("==")[0] for c in pip.calls[0] if "==" in c}
    assert pins == set(RUNTIME_REQUIREMENTS) | set(CONTROL_REQUIREMENTS) >= {"pydantic", "numpy"}
