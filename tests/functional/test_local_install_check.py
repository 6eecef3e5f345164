"""``shardkit local up`` and ``deploy --local``, in-process, when moto is missing or untested.

The installed versions are faked (``shardkit.local.compat.installed_version``); the command must
fail as a user error naming the versions and the fix, before any server process is started.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from shardkit.cli.main import main
from shardkit.local import compat
from shardkit.local import server as server_mod

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(QUICKSTART, tmp_path / "qs", ignore=shutil.ignore_patterns(".shardkit"))
    return tmp_path / "qs"


def installed(monkeypatch: pytest.MonkeyPatch, **found: str | None) -> None:
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(compat, "installed_version", lambda name: found.get(name))


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    before = set(server_mod._children)
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert set(server_mod._children) == before  # no server process was started
    return lines[0]


def test_local_up_without_moto_names_the_extra(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed(monkeypatch, moto=None, botocore="1.43.11")
    line = fails(capsys, "local", "up", str(project))
    assert line == (
        f"error: the local cloud needs moto, which is not installed for {sys.executable} — "
        "install the local cloud: pip install 'shardkit[local]' "
        "(in a checkout: pip install -c constraints.txt -e '.[local]')"
    )
    assert not (project / ".shardkit" / "local" / "cloud.json").exists()


def test_local_up_with_an_untested_pair_names_both_versions(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed(monkeypatch, moto="5.2.5", botocore="1.45.2")
    line = fails(capsys, "local", "up", str(project))
    assert line.startswith("error: moto 5.2.5 with botocore 1.45.2 is not a pair the local cloud")
    assert "pip install 'moto>=5.2.5,<5.3' 'botocore>=1.35.0,<1.45'" in line


def test_deploy_local_checks_before_it_starts_the_cloud(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed(monkeypatch, moto="5.1.9", botocore="1.43.11")
    line = fails(capsys, "deploy", str(project), "--local", "--yes")
    assert "moto 5.1.9 with botocore 1.43.11 is not a pair" in line
    assert not (project / ".shardkit" / "deploy" / "local" / "manifest.json").exists()
