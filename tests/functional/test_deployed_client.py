"""``client_for_project`` on a project deployed to moto: its registry's failures reach the caller
and the CLI as shardkit errors, never as botocore's (docs/proxy.md, "Errors")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from test_deploy_engine import bucket_of, deploy

import shardkit
from shardkit.cli.main import main
from shardkit.config import Project
from shardkit.deploy.engine import Deployer


def test_a_deployed_projects_unreadable_registry_is_a_registry_error(
    make_project: Callable[..., Project],
    deployer: Callable[[Project], Deployer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = make_project()
    deploy(deployer(project))
    client = shardkit.client_for_project(project.root)
    assert client.holder.version == 1
    client.close()

    region = sorted(project.config.regions)[0]
    bucket = bucket_of(project, region)
    boto3.client("s3", region_name=region).delete_object(Bucket=bucket, Key="registry/map.skm")
    with pytest.raises(shardkit.RegistryUnreachableError) as err:
        shardkit.client_for_project(project.root)
    uri = f"s3://{bucket}/registry/map.skm"
    assert f"cannot fetch the map from {uri}: NoSuchKey" in err.value.message
    assert "nothing is published there" in err.value.hint

    code = cli("invoke", project.root, "alice")
    assert code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: cannot fetch the map from {uri}: NoSuchKey")
    assert "— nothing is published there" in line and "Traceback" not in line


def cli(*args: str | Path) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
