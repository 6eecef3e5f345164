"""The project the controller function carries is checked before it is used: every file against
the package's manifest, the secret's key against the public key the project trusts, and each
way the secret cannot be had is an AutoshardError naming it and what to do. Pure: a fake facade
stands for Secrets Manager."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from shardkit.autoshard.carried import _secret_value, check_files, check_key
from shardkit.errors import AutoshardError, AwsAccessDeniedError, AwsNotFoundError
from shardkit.keys import create_key


def _pair(directory: Path, key_id: str) -> tuple[bytes, bytes]:
    create_key(key_id, directory)
    return (directory / f"{key_id}.key").read_bytes(), (directory / f"{key_id}.pub").read_bytes()


def test_a_file_unlike_the_manifest_is_named() -> None:
    files = {"shardkit.toml": b"[project]\n", "app/model.py": b"x = 1\n"}
    manifest = {"files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    check_files(files, manifest)  # as packaged: fine
    with pytest.raises(AutoshardError, match=r"app/model.py has sha256 .*, the package recorded"):
        check_files({**files, "app/model.py": b"x = 2\n"}, manifest)
    with pytest.raises(AutoshardError, match=r"shardkit\.toml has sha256"):
        check_files({"app/model.py": files["app/model.py"]}, manifest)  # one missing


def test_the_secret_must_hold_the_trusted_key(tmp_path: Path) -> None:
    pem, pub = _pair(tmp_path, "mine")
    other, _ = _pair(tmp_path, "other")
    check_key(pem, pub, secret="s", key_id="mine")
    with pytest.raises(AutoshardError, match="secret s holds another key than 'mine'") as e:
        check_key(other, pub, secret="s", key_id="mine")
    assert "shardkit deploy" in e.value.hint
    with pytest.raises(AutoshardError, match="does not hold an Ed25519 signing key"):
        check_key(b"not a key", pub, secret="s", key_id="mine")


class FakeAws:
    def __init__(self, error: Exception | None = None, answer: Any = None) -> None:
        self.error, self.answer = error, answer

    def call(self, service: str, region: str, operation: str, **params: Any) -> Any:
        assert (service, operation, params["SecretId"]) == (
            "secretsmanager",
            "get_secret_value",
            "s",
        )
        if self.error:
            raise self.error
        return self.answer


def test_a_secret_that_cannot_be_had_is_named_with_what_to_do() -> None:
    assert _secret_value(FakeAws(answer={"SecretBinary": b"pem"}), "eu-west-1", "s") == b"pem"
    with pytest.raises(AutoshardError, match=r"secret s in eu-west-1, .* does not exist"):
        _secret_value(FakeAws(AwsNotFoundError("gone")), "eu-west-1", "s")
    with pytest.raises(AutoshardError, match="may not read secret s in eu-west-1") as e:
        _secret_value(FakeAws(AwsAccessDeniedError("denied")), "eu-west-1", "s")
    assert "secretsmanager:GetSecretValue" in e.value.hint
    with pytest.raises(AutoshardError, match="SHARDKIT_SIGNING_SECRET is not set"):
        _secret_value(FakeAws(), "eu-west-1", "")
