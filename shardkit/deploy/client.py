"""A routing client for a deployed project: its registry, its keys, its functions.

``client_for_project("examples/quickstart")`` reads what ``shardkit deploy`` recorded (the
functions, URLs and registry buckets of the project's target) and returns a client that loads the
signed map from the registry, trusts the project's public keys and invokes the shard functions:
on AWS through the Lambda API or the Function URLs, on the local cloud through its gateway, which
runs them in the local executor.

Control plane: it reads the project's configuration and deploy records; the client it returns
is the data plane's :class:`~shardkit.routing.client.RoutingClient`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config.loader import load_project
from ..errors import DeployError
from ..keys import load_trusted_keys
from ..routing.client import RetryPolicy, RoutingClient
from ..routing.sources import map_source
from ..routing.transports import FunctionUrlTransport, LambdaTransport, Transport
from ..sharding.holder import MapHolder
from ..sharding.shardmap import Shard

__all__ = ["client_for_project", "transport_for_project"]


def client_for_project(
    project_dir: str | os.PathLike[str],
    *,
    local: bool | None = None,
    transport: str = "invoke",
    retry: RetryPolicy | None = None,
    hedge_after_s: float | None = None,
) -> RoutingClient:
    """A :class:`RoutingClient` for the deployed project. ``transport``: "invoke" or "url"."""
    deployment = _Deployment(project_dir, local)
    region = deployment.record.map_regions[0]
    bucket = deployment.record.buckets()[region]
    # One translation of the registry's failures for every client: RegistryUnreachableError
    # naming the S3 URI and the error code, never a raw botocore error (map_source).
    fetch = map_source(f"s3://{bucket}/registry/map.skm", s3_client=deployment.client("s3", region))
    holder = MapHolder(load_trusted_keys(deployment.project.keys_dir), fetch)
    holder.refresh()
    chosen = deployment.transport(transport)
    return RoutingClient(holder, chosen, retry=retry, hedge_after_s=hedge_after_s)


def transport_for_project(
    project_dir: str | os.PathLike[str], *, local: bool | None = None, transport: str = "invoke"
) -> Transport:
    """The transport :func:`client_for_project` uses, for a client of your own: it reaches the
    deployed project's shard functions by the names its deploy recorded. On the local cloud,
    ``"invoke"`` is a :class:`LambdaTransport` pointed at the local gateway with the local
    cloud's credentials (a plain ``LambdaTransport`` would look for AWS credentials)."""
    return _Deployment(project_dir, local).transport(transport)


class _Deployment:
    """What a deploy recorded for the project's target, and how to reach it."""

    def __init__(self, project_dir: str | os.PathLike[str], local: bool | None) -> None:
        from .engine import Deployer
        from .targets import open_target, target_name

        self.project = load_project(project_dir)
        target = target_name(self.project, local)
        deployer = Deployer(self.project, open_target(self.project, local=target == "local"))
        self.record = deployer.record()  # the remote record: another machine's deploy is seen too
        if not self.record.map_regions:
            raise DeployError(
                f"project {self.project.config.project.name!r} has no published map on "
                f"target {target}",
                hint=f"deploy it first: `shardkit deploy {project_dir}`",
            )
        self.gateway, self.client = _clients(self.project.root, target)
        self.deployed = _Deployed(deployer.record)

    def transport(self, kind: str) -> Transport:
        return _transport(kind, self.deployed, self.gateway, self.client)


class _Deployed:
    """Function names and URLs per shard, as the deploy recorded them. A shard missing here is
    looked up once more in the record: a reshard adds shards, and a client made before it
    must follow a redirect to one (its map refreshes; so must this table)."""

    def __init__(self, record: Callable[[], Any]) -> None:
        self._record = record
        self._load()

    def _load(self) -> None:
        record = self._record()
        self.functions, self.urls = record.functions(), record.urls()

    def lookup(self, table: str, shard_id: str) -> str | None:
        found = getattr(self, table).get(shard_id)
        if not found:
            self._load()
            found = getattr(self, table).get(shard_id)
        return found or None


class _Urls(Mapping[str, str]):
    """The Function URL of each shard, looked up per request (see :class:`_Deployed`)."""

    def __init__(self, deployed: _Deployed, convert: Callable[[str], str]) -> None:
        self._deployed, self._convert = deployed, convert

    def __getitem__(self, shard_id: str) -> str:
        url = self._deployed.lookup("urls", shard_id)
        if url is None:
            raise KeyError(shard_id)
        return self._convert(url)

    def __iter__(self) -> Iterator[str]:
        return iter(self._deployed.urls)

    def __len__(self) -> int:
        return len(self._deployed.urls)


def _clients(root: Path, target: str) -> tuple[str | None, Any]:
    if target == "aws":
        import boto3

        return None, lambda service, region: boto3.client(service, region_name=region)
    from ..local import server

    endpoint = server.require(root)
    gateway = server.status(root).get("gateway")
    return gateway, lambda service, region: server.client(service, region, endpoint)


def _transport(kind: str, deployed: _Deployed, gateway: str | None, client: Any) -> Transport:
    def function_for(shard: Shard) -> str | None:
        # None: not deployed (a removed shard of a stale map, most likely). The transport
        # reports it as a missing shard, which makes the client refresh its map first.
        return deployed.lookup("functions", shard.id)

    if kind == "invoke":
        if gateway is None:
            return LambdaTransport(function_for)
        from ..local import server

        # The routing client retries by itself, within its budget: botocore must not too.
        config = _config(
            retries={"max_attempts": 1, "mode": "standard"},
            read_timeout=65,
            max_pool_connections=64,
        )
        return LambdaTransport(
            function_for, client_for=lambda region: server.client("lambda", region, gateway, config)
        )
    if kind == "url":
        if gateway is not None:
            from botocore.credentials import Credentials

            from ..local.gateway import url_id

            local = _Urls(deployed, lambda url: f"{gateway}/urls/{url_id(url)}/")
            return FunctionUrlTransport(local, credentials=Credentials("testing", "testing"))
        return FunctionUrlTransport(_Urls(deployed, lambda url: url))
    raise DeployError(f"unknown transport {kind!r}", hint="use 'invoke' or 'url'")


def _config(**settings: Any) -> Any:
    from botocore.config import Config

    return Config(**settings)
