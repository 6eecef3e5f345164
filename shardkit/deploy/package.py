"""The proxy code package: a reproducible zip of the data plane and the project's own code.

A project with an autoshard policy gets all of shardkit instead of its data plane alone: the
auto-shard controller's function (docs/autoshard.md) runs from the same package. The shard
functions still import only the data plane. Its package also carries the project the controller
deploys, under ``_project/``: ``shardkit.toml``, the ``.pub`` files of the key directory and a
``manifest.json`` of their hashes and the code directory's - never a private key (the controller
reads the signing key from Secrets Manager) and nothing of ``.shardkit/``. So the configuration
the controller acts on is always the one deployed with the code it runs, verified by Lambda's
code hash like the rest; the price is that editing ``shardkit.toml`` of an autoshard project
gives every function a new package.

Same inputs, same bytes, same hash: entries are sorted, timestamps fixed at 1980-01-01, modes
normalised, and compiled or cached files left out. The hash names the object in each region's
artifact bucket (``artifacts/code/<sha256>.zip``), so an unchanged package is never uploaded twice
and an unchanged function is never updated.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..blueprint.definition import CodeArtifact
from ..config.loader import Project

__all__ = ["DATA_PLANE", "PROJECT_DIR", "Package", "build_package", "installed_dependencies"]

#: What of shardkit runs inside a shard function: the data plane, nothing else.
DATA_PLANE = (
    "shardkit/__init__.py",
    "shardkit/errors.py",
    "shardkit/protocol.py",
    "shardkit/py.typed",
    "shardkit/sharding/__init__.py",
    "shardkit/sharding/hashing.py",
    "shardkit/sharding/shardmap.py",
    "shardkit/sharding/codec.py",
    "shardkit/sharding/holder.py",
    "shardkit/proxy/",
    "shardkit/routing/",
)
#: Where an autoshard project's package carries the project itself (see the module docstring).
PROJECT_DIR = "_project"
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_SUFFIXES = (".pyc", ".pyo")
_SKIP_DIRS = {"__pycache__", ".shardkit", ".git", ".venv", ".pytest_cache", ".mypy_cache"}


@dataclass(frozen=True)
class Package:
    data: bytes
    sha256: str
    files: tuple[str, ...]

    @property
    def artifact(self) -> CodeArtifact:
        return CodeArtifact(key=f"artifacts/code/{self.sha256}.zip", sha256=self.sha256)


def build_package(project: Project, dependencies: Mapping[str, bytes] | None = None) -> Package:
    """Zip the data plane of the installed shardkit, the project's code directory
    (``[proxy] code``, ``app`` by default) and, for AWS, the ``dependencies`` unpacked from
    their wheels (see :mod:`shardkit.deploy.vendor`)."""
    entries: dict[str, bytes] = dict(dependencies or {})
    control = project.config.autoshards
    entries.update((name, path.read_bytes()) for name, path in _shardkit_files(control))
    code = project.config.proxy.code
    app = project.root / code
    if app.is_dir():
        entries.update((name, path.read_bytes()) for name, path in _tree(app, code))
    if control:
        entries.update(project_files(project, code))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[name])
    data = buf.getvalue()
    return Package(data, hashlib.sha256(data).hexdigest(), tuple(sorted(entries)))


def project_files(project: Project, code: str) -> dict[str, bytes]:
    """``_project/``: the configuration, the public keys, and a manifest of their hashes and
    those of the code directory's files (what the controller checks its copy against)."""
    files = {"shardkit.toml": (project.root / "shardkit.toml").read_bytes()}
    keys = project.keys_dir
    if keys.is_dir():
        rel = keys.relative_to(project.root).as_posix()
        files.update((f"{rel}/{p.name}", p.read_bytes()) for p in sorted(keys.glob("*.pub")))
    app = project.root / code
    hashed = dict(files)
    if app.is_dir():
        hashed.update((name, path.read_bytes()) for name, path in _tree(app, code))
    manifest = {
        "code": code,
        "keys_dir": project.config.signing.keys_dir,
        "key_id": project.config.signing.key_id,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(hashed.items())},
    }
    out = {f"{PROJECT_DIR}/{name}": data for name, data in files.items()}
    out[f"{PROJECT_DIR}/manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    return out


def installed_dependencies(task_root: Path, code: str) -> dict[str, bytes]:
    """The files of an unpacked package (a function's task root) that are neither shardkit,
    the project's code nor its copy: the vendored dependencies, as :func:`build_package` takes
    them, so a package built there again is the same package."""
    own = {"shardkit", code.split("/")[0], PROJECT_DIR}
    return {
        name.removeprefix("./"): path.read_bytes()
        for name, path in _tree(task_root, ".")
        if name.split("/")[1] not in own
    }


def _shardkit_files(control: bool = False) -> Iterator[tuple[str, Path]]:
    """shardkit's files: the data plane, or everything (``control``)."""
    root = Path(__file__).resolve().parents[1]
    for name, path in _tree(root, "shardkit"):
        if control or any(
            name == p or (p.endswith("/") and name.startswith(p)) for p in DATA_PLANE
        ):
            yield name, path


def _tree(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or any(p in _SKIP_DIRS for p in rel.parts):
            continue
        if path.suffix in _SKIP_SUFFIXES:
            continue
        yield f"{prefix}/{rel.as_posix()}", path
