"""The project the controller function carries: rebuilt in ``/tmp`` from its code package and a
secret, so the scheduled controller runs on AWS without the project directory.

``shardkit deploy`` of an autoshard project puts the project into the code package, under
``_project/`` (:func:`shardkit.deploy.package.project_files`: ``shardkit.toml``, the public keys
and a manifest of their and the code directory's hashes), and the map signing key into a
Secrets Manager secret only the controller's role may read (the ``secret`` kind). On a cold
start :func:`materialise` copies the configuration, the keys and the code directory into
``/tmp/shardkit-project/<manifest hash>/``, checks every file against the manifest, fetches the
key from the secret and checks it is the key the project trusts; a warm start reuses that copy
while the manifest is the same (a new package is a new manifest: it is made again).

Anything wrong - no copy in the package, a file that does not match, the secret missing,
unreadable or holding another key - is an :class:`AutoshardError` naming it and what to do,
raised before the controller exists, so nothing is applied. The pure checks
(:func:`check_files`, :func:`check_key`) are separate from the I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..deploy.package import PROJECT_DIR
from ..errors import AutoshardError, AwsAccessDeniedError, AwsNotFoundError

__all__ = ["check_files", "check_key", "materialise"]

_REDEPLOY = "deploy the project again from its directory (`shardkit deploy`)"
_made: dict[str, Path] = {}  # manifest hash -> the project made from it, while warm


def materialise(task_root: Path, secret: str, aws: Any, *, base: Path | None = None) -> Path:
    """The project directory made from the package unpacked at ``task_root`` and the signing
    key in ``secret`` (read with ``aws``, a :class:`~shardkit.aws.facade.Aws`)."""
    manifest_path = task_root / PROJECT_DIR / "manifest.json"
    try:
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError):
        raise AutoshardError(
            f"the controller's code package carries no readable project ({manifest_path})",
            hint=f"it was deployed by a shardkit that did not package it: {_REDEPLOY}",
        ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest in _made and (_made[digest] / "shardkit.toml").is_file():
        return _made[digest]
    root = (base or Path(tempfile.gettempdir()) / "shardkit-project") / digest[:24]
    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    files = _copy(task_root, manifest, work)
    check_files(files, manifest)
    pem = _secret_value(aws, _home_region(work), secret)
    keys = work / str(manifest["keys_dir"])
    key_id = str(manifest["key_id"])
    check_key(pem, (keys / f"{key_id}.pub").read_bytes(), secret=secret, key_id=key_id)
    keys.mkdir(parents=True, exist_ok=True)
    key_path = keys / f"{key_id}.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    shutil.rmtree(root, ignore_errors=True)
    work.rename(root)
    _made[digest] = root
    return root


def _copy(task_root: Path, manifest: Mapping[str, Any], work: Path) -> dict[str, bytes]:
    """Copy what the manifest lists into ``work``: the project's files from ``_project/``, the
    code directory's from the package root. Returns name -> bytes as copied."""
    code = str(manifest["code"])
    files: dict[str, bytes] = {}
    for name in manifest["files"]:
        source = task_root / (name if name.split("/")[0] == code else f"{PROJECT_DIR}/{name}")
        try:
            data = source.read_bytes()
        except OSError:
            data = b""  # reported as a mismatch, with the others
        files[name] = data
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files


def check_files(files: Mapping[str, bytes], manifest: Mapping[str, Any]) -> None:
    """Every file as the manifest hashed it; an :class:`AutoshardError` naming the first that
    is not."""
    for name, want in sorted(manifest["files"].items()):
        got = hashlib.sha256(files.get(name, b"")).hexdigest()
        if got != want:
            raise AutoshardError(
                f"the controller's copy of the project does not match its manifest: {name} has "
                f"sha256 {got[:12]}…, the package recorded {want[:12]}…",
                hint=f"the code package is damaged or was altered: {_REDEPLOY}",
            )


def check_key(pem: bytes, public_pem: bytes, *, secret: str, key_id: str) -> None:
    """The secret holds the private key of ``key_id``'s public key, or an AutoshardError."""
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        private = None
    if not isinstance(private, Ed25519PrivateKey):
        raise AutoshardError(
            f"secret {secret} does not hold an Ed25519 signing key (PEM)",
            hint=f"it was overwritten by hand: {_REDEPLOY}, which stores the key again",
        )
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    public = serialization.load_pem_public_key(public_pem)
    if private.public_key().public_bytes(*raw) != public.public_bytes(*raw):
        raise AutoshardError(
            f"secret {secret} holds another key than {key_id!r}, the key the deployed project "
            "trusts: maps signed with it would be refused",
            hint=f"{_REDEPLOY}; it stores the project's key in the secret",
        )


def _home_region(work: Path) -> str:
    from ..config import load_project

    return load_project(work).config.home_region


def _secret_value(aws: Any, region: str, secret: str) -> bytes:
    if not secret:
        raise AutoshardError(
            "SHARDKIT_SIGNING_SECRET is not set: the controller function does not know where "
            "the signing key is",
            hint=f"its configuration is from an older shardkit: {_REDEPLOY}",
        )
    try:
        answer = aws.call(
            "secretsmanager", region, "get_secret_value", resource=secret, SecretId=secret
        )
    except AwsNotFoundError:
        raise AutoshardError(
            f"secret {secret} in {region}, which holds the map signing key, does not exist",
            hint=f"it was deleted or never stored: {_REDEPLOY}",
        ) from None
    except AwsAccessDeniedError:
        raise AutoshardError(
            f"the controller may not read secret {secret} in {region} (the map signing key)",
            hint="its role lacks secretsmanager:GetSecretValue on that secret: "
            f"{_REDEPLOY}, which restores the role's policy",
        ) from None
    value = answer.get("SecretBinary") or answer.get("SecretString", "").encode()
    return bytes(value)
