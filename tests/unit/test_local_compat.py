"""The local cloud's moto/botocore check: moto must be installed and the pair must be tested.

Versions are faked through ``check(versions=...)``; the real installed pair is checked too
(tests/unit/test_dependencies.py checks that constraints.txt holds an accepted pair).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shardkit.errors import LocalCloudError
from shardkit.local import compat
from shardkit.local.__main__ import main as server_main


def fake(**found: str | None):
    return lambda name: found.get(name)


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV, raising=False)


def test_a_tested_pair_passes_and_is_returned() -> None:
    assert compat.check(fake(moto="5.2.5", botocore="1.35.0")) == {
        "moto": "5.2.5",
        "botocore": "1.35.0",
    }
    assert compat.check(fake(moto="5.2.9", botocore="1.44.99"))["botocore"] == "1.44.99"


def test_the_installed_pair_is_a_tested_one() -> None:
    found = compat.check()
    assert set(found) == {"moto", "botocore"}
    assert all(re.match(r"\d+\.\d+", v) for v in found.values())


def test_moto_missing_names_the_extra_to_install() -> None:
    with pytest.raises(LocalCloudError) as caught:
        compat.check(fake(moto=None, botocore="1.43.11"))
    assert "needs moto, which is not installed" in caught.value.message
    assert "pip install 'shardkit[local]'" in caught.value.hint
    assert "constraints.txt" in caught.value.hint


@pytest.mark.parametrize(
    ("moto", "botocore", "outside"),
    [
        ("5.2.5", "1.45.0", "botocore"),  # a botocore newer than any tested
        ("5.2.5", "1.34.162", "botocore"),  # older than the floor
        ("5.2.1", "1.43.11", "moto"),  # a known-bad moto
        ("5.3.0", "1.43.11", "moto"),  # an untested minor
        ("4.2.14", "2.0.0", "moto, botocore"),
    ],
)
def test_an_untested_pair_is_refused_naming_both_versions_and_the_fix(
    moto: str, botocore: str, outside: str
) -> None:
    with pytest.raises(LocalCloudError) as caught:
        compat.check(fake(moto=moto, botocore=botocore))
    message, hint = caught.value.message, caught.value.hint
    assert f"moto {moto} with botocore {botocore} is not a pair" in message
    assert f"outside: {outside})" in message
    assert "moto>=5.2.5,<5.3" in message and "botocore>=1.35.0,<1.45" in message
    assert "pip install 'moto>=5.2.5,<5.3' 'botocore>=1.35.0,<1.45' 'boto3>=1.35.0,<1.45'" in hint
    assert "pip install -c constraints.txt -e '.[local]'" in hint
    assert f"{compat.ALLOW_UNTESTED_ENV}=1" in hint


def test_the_override_allows_an_untested_pair_but_not_a_missing_moto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(compat.ALLOW_UNTESTED_ENV, "1")
    assert compat.check(fake(moto="5.3.0", botocore="1.50.1")) == {
        "moto": "5.3.0",
        "botocore": "1.50.1",
    }
    with pytest.raises(LocalCloudError, match="needs moto"):
        compat.check(fake(moto=None, botocore="1.50.1"))
    monkeypatch.setenv(compat.ALLOW_UNTESTED_ENV, "yes")  # only "1" counts
    with pytest.raises(LocalCloudError, match="not a pair"):
        compat.check(fake(moto="5.3.0", botocore="1.50.1"))


def test_botocore_missing_is_refused() -> None:
    with pytest.raises(LocalCloudError, match="botocore is not installed"):
        compat.check(fake(moto="5.2.5", botocore=None))


@pytest.mark.parametrize(
    ("text", "release"),
    [("5.2.5", (5, 2, 5)), ("1.43.11", (1, 43, 11)), ("5.2.6.dev1", (5, 2, 6)), ("5.3rc1", (5, 3))],
)
def test_release_reads_the_numeric_part(text: str, release: tuple[int, ...]) -> None:
    assert compat.release(text) == release


def test_the_server_process_refuses_to_start_with_an_untested_pair(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(compat, "installed_version", fake(moto="5.2.5", botocore="1.45.2"))
    assert server_main(["--project", str(tmp_path), "--instance", "x"]) == 2
    out = capsys.readouterr().out
    assert "error: moto 5.2.5 with botocore 1.45.2 is not a pair" in out
    assert not (tmp_path / ".shardkit" / "local" / "cloud.json").exists()
