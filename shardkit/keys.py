"""Ed25519 signing keys for shard maps, kept as PEM files in a key directory.

A key directory holds ``<key_id>.key`` (PKCS#8 private key, mode 0600) and ``<key_id>.pub``
(SubjectPublicKeyInfo). Publishers need the ``.key``; every client needs only the ``.pub`` files
of the key ids it trusts. Both are plain PEM, so ``openssl pkey`` reads them too.

A key is never overwritten: creating one whose files exist is an error.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._files import write_bytes_atomic, write_bytes_exclusive
from .errors import KeyStoreError

__all__ = [
    "KEY_ID_PATTERN",
    "PublicKeyInfo",
    "SigningKey",
    "create_key",
    "format_trusted_keys",
    "list_keys",
    "load_public_key",
    "load_signing_key",
    "load_trusted_keys",
]

KEY_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


@dataclass(frozen=True)
class PublicKeyInfo:
    key_id: str
    public_key: str  # base64 of the raw 32 bytes
    fingerprint: str  # first 16 hex digits of sha256(raw public key)
    path: str
    has_private: bool

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class SigningKey:
    """A loaded private key: signs map envelopes."""

    def __init__(self, key_id: str, private: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self._private = private

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(_RAW, _RAW_PUB)


def check_key_id(key_id: str) -> str:
    if not re.match(KEY_ID_PATTERN, key_id):
        raise KeyStoreError(
            f"key id {key_id!r} is not allowed",
            hint="use 1-63 characters: lowercase letters, digits, '.', '_' or '-'",
        )
    return key_id


def create_key(
    key_id: str, directory: str | os.PathLike[str], *, exist_ok: bool = False
) -> PublicKeyInfo:
    """Create ``<key_id>.key`` and ``<key_id>.pub`` in ``directory``; never overwrites.

    The private key appears whole or not at all, and of two processes creating the same key at
    once exactly one succeeds. ``exist_ok``: a key that exists (or that another process created
    meanwhile) is kept and returned instead of being an error.
    """
    check_key_id(key_id)
    folder = Path(directory)
    private_path, public_path = folder / f"{key_id}.key", folder / f"{key_id}.pub"
    for path in (private_path, public_path):
        if path.exists() and not exist_ok:
            raise _exists(key_id, path)
    if not private_path.exists():
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_bytes_exclusive(private_path, pem, mode=0o600)
        except FileExistsError:
            if not exist_ok:
                raise _exists(key_id, private_path) from None
    if not public_path.exists():  # its private key's creator may not have written it yet
        public = load_signing_key(key_id, folder).public_bytes
        write_bytes_atomic(public_path, _public_pem(public))
    return _info(key_id, public_path)


def _exists(key_id: str, path: Path) -> KeyStoreError:
    return KeyStoreError(
        f"key {key_id!r} already exists at {path}",
        hint="pick another key id, or remove the old files if you mean to retire it",
    )


def _public_pem(raw: bytes) -> bytes:
    return Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_signing_key(key_id: str, directory: str | os.PathLike[str]) -> SigningKey:
    path = Path(directory) / f"{check_key_id(key_id)}.key"
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyStoreError(
            f"no signing key {key_id!r}: {path} does not exist",
            hint=f"create it with `shardkit keys create {key_id} --dir {directory}`",
        ) from None
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyStoreError(
            f"{path} is not an ed25519 key", hint="create one with `shardkit keys create`"
        )
    return SigningKey(key_id, private)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The raw 32-byte public key in a ``.pub`` PEM file."""
    p = Path(path)
    try:
        public = serialization.load_pem_public_key(p.read_bytes())
    except FileNotFoundError:
        raise KeyStoreError(f"no public key file {p}") from None
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"{p} is not a PEM public key: {exc}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise KeyStoreError(f"{p} is not an ed25519 public key")
    return public.public_bytes(_RAW, _RAW_PUB)


def load_trusted_keys(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every ``<key_id>.pub`` in ``directory``, as ``{key_id: raw public key}``."""
    folder = Path(directory)
    if not folder.is_dir():
        raise KeyStoreError(
            f"no key directory {folder}",
            hint="pass --keys DIR (or set SHARDKIT_KEYS_DIR) to where the .pub files are",
        )
    return {p.stem: load_public_key(p) for p in sorted(folder.glob("*.pub"))}


def format_trusted_keys(directory: str | os.PathLike[str]) -> str:
    """``id=base64,...`` of every public key in ``directory`` (empty if there is none): the form
    shard functions read from ``SHARDKIT_TRUSTED_KEYS``
    (see :func:`shardkit.sharding.holder.parse_trusted_keys`)."""
    if not Path(directory).is_dir():
        return ""
    keys = load_trusted_keys(directory)
    return ",".join(f"{k}={base64.b64encode(v).decode()}" for k, v in sorted(keys.items()))


def list_keys(directory: str | os.PathLike[str]) -> list[PublicKeyInfo]:
    folder = Path(directory)
    return [_info(p.stem, p) for p in sorted(folder.glob("*.pub"))] if folder.is_dir() else []


def _info(key_id: str, public_path: Path) -> PublicKeyInfo:
    raw = load_public_key(public_path)
    return PublicKeyInfo(
        key_id=key_id,
        public_key=base64.b64encode(raw).decode(),
        fingerprint=hashlib.sha256(raw).hexdigest()[:16],
        path=str(public_path),
        has_private=public_path.with_suffix(".key").exists(),
    )
