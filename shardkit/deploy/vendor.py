"""Wheels of the data plane's dependencies, for the function's runtime and architecture.

Lambda's Python runtime brings boto3, nothing else the proxy imports: msgpack, xxhash and
jump-consistent-hash are native extensions, and cryptography and Powertools must come along too.
They are fetched the way pip installs for another platform - ``pip download --only-binary=:all:
--platform manylinux2014_<arch> --python-version 3.12`` - never by building in Docker, pinned to
the versions installed here (what the tests ran against), and cached by that exact set, so the
same inputs give the same wheels and the same code package hash.

The local cloud runs functions with this machine's own packages and needs none of this.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..errors import DeployError

__all__ = [
    "CONTROL_REQUIREMENTS",
    "RUNTIME_REQUIREMENTS",
    "fetch_wheels",
    "platform_for",
    "requirements",
    "wheel_files",
]

#: What the proxy imports that the Lambda runtime does not provide.
RUNTIME_REQUIREMENTS = (
    "msgpack",
    "xxhash",
    "jump-consistent-hash",
    "cryptography",
    "aws-lambda-powertools",
)
#: What the auto-shard controller function imports besides (docs/autoshard.md): the project's
#: configuration is pydantic models and the decisions are numpy. pip brings their own
#: dependencies (pydantic-core, annotated-types, ...).
CONTROL_REQUIREMENTS = ("pydantic", "numpy")
_PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}

Runner = Callable[..., Any]


def platform_for(architecture: str) -> str:
    try:
        return _PLATFORMS[architecture]
    except KeyError:
        raise DeployError(
            f"unknown Lambda architecture {architecture!r}",
            hint=f"use one of {', '.join(_PLATFORMS)}",
        ) from None


def requirements(control: bool = False) -> tuple[str, ...]:
    """What a code package needs: the data plane's, and the controller's when it carries one."""
    return RUNTIME_REQUIREMENTS + (CONTROL_REQUIREMENTS if control else ())


def pinned_requirements(names: tuple[str, ...] = RUNTIME_REQUIREMENTS) -> list[str]:
    """``name==version`` of each requirement, as installed here."""
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise DeployError(
                f"{name} is not installed, so its version cannot be pinned",
                hint="reinstall shardkit (pip install shardkit)",
            ) from None
    return pins


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shardkit" / "wheels"


def fetch_wheels(
    runtime: str,
    architecture: str,
    *,
    cache: Path | None = None,
    run: Runner = subprocess.run,
    names: tuple[str, ...] = RUNTIME_REQUIREMENTS,
) -> list[Path]:
    """The wheels of ``names`` (pinned as installed here, with their dependencies) for
    ``runtime`` (e.g. ``python3.12``) and ``architecture``, downloaded once."""
    python_version = runtime.removeprefix("python")
    platform = platform_for(architecture)
    pins = pinned_requirements(names)
    digest = hashlib.sha256(json.dumps([python_version, platform, pins]).encode()).hexdigest()
    target = (cache or default_cache()) / digest[:24]
    if (target / "COMPLETE").exists():
        return sorted(target.glob("*.whl"))
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--only-binary=:all:",
            "--platform",
            platform,
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--dest",
            str(partial),
            "--quiet",
            *pins,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = " ".join(str(result.stderr).strip().splitlines()[-2:])
        raise DeployError(
            f"could not fetch {platform} wheels for {runtime}: {tail}",
            hint="the AWS target needs the package index (PyPI) once per set of "
            "versions; check the network or pip's index settings",
        )
    (partial / "COMPLETE").write_text("\n".join(pins) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return sorted(target.glob("*.whl"))


def wheel_files(wheels: list[Path]) -> dict[str, bytes]:
    """Every file of the wheels, as it would be installed (wheels unpack to site-packages)."""
    files: dict[str, bytes] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if not name.endswith("/"):
                    files[name] = zf.read(name)
    return files
