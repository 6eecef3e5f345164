"""Signing keys on disk: created whole, once, even by two processes at the same moment."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import shardkit
from shardkit import keys
from shardkit._files import write_bytes_exclusive
from shardkit.errors import KeyStoreError


def race(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **kw: Any) -> list[Any]:
    """Two creators of key ``k`` that both found it missing and generated a key pair before
    either wrote: each result is a PublicKeyInfo, or the error it raised."""
    both_ready = threading.Barrier(2, timeout=5)

    def meeting(path: Path, data: bytes, mode: int = 0o644) -> None:
        both_ready.wait()
        write_bytes_exclusive(path, data, mode)

    monkeypatch.setattr(keys, "write_bytes_exclusive", meeting)
    results: list[Any] = [None, None]

    def create(i: int) -> None:
        try:
            results[i] = keys.create_key("k", tmp_path, **kw)
        except KeyStoreError as exc:
            results[i] = exc

    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_creators_at_once_end_with_one_key_both_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, second = race(monkeypatch, tmp_path, exist_ok=True)
    assert first.public_key == second.public_key  # the winner's key, for both
    signing = shardkit.load_signing_key("k", tmp_path)
    assert shardkit.load_trusted_keys(tmp_path) == {"k": signing.public_bytes}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "k.pub"]  # no leftovers
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600


def test_without_exist_ok_the_loser_of_the_race_is_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results = race(monkeypatch, tmp_path)
    (error,) = [r for r in results if isinstance(r, KeyStoreError)]
    (made,) = [r for r in results if not isinstance(r, KeyStoreError)]
    assert error.message == f"key 'k' already exists at {tmp_path / 'k.key'}"
    assert (
        shardkit.load_trusted_keys(tmp_path)["k"]
        == shardkit.load_signing_key("k", tmp_path).public_bytes
    )
    assert made.has_private


def test_an_existing_key_is_kept_and_its_missing_public_half_written(tmp_path: Path) -> None:
    made = keys.create_key("k", tmp_path)
    (tmp_path / "k.pub").unlink()  # as if its creator had not got that far yet
    again = keys.create_key("k", tmp_path, exist_ok=True)
    assert again.public_key == made.public_key
    with pytest.raises(KeyStoreError, match="already exists"):
        keys.create_key("k", tmp_path)


def test_an_exclusive_write_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_bytes_exclusive(path, b"first")
    with pytest.raises(FileExistsError):
        write_bytes_exclusive(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
