"""Open a deploy target: real AWS, or the local cloud. One code path; only the endpoint and the
credentials differ (docs/architecture.md §4.7)."""

from __future__ import annotations

from ..aws.facade import INVOKE, Aws, boto3_factory
from ..config.loader import Project
from .engine import Target

__all__ = ["identify", "open_target", "target_name"]


def target_name(project: Project, local: bool | None) -> str:
    """``--local`` wins; otherwise the project's ``project.target``."""
    if local is None:
        return project.config.project.target
    return "local" if local else "aws"


def open_target(project: Project, *, local: bool | None = None, start: bool = False) -> Target:
    """The project's target. For the local cloud, ``start`` starts it when it is not running;
    otherwise a stopped local cloud is a :class:`LocalCloudError`."""
    if target_name(project, local) == "aws":
        return identify(Aws(boto3_factory(), target="aws"), "aws")
    from ..local import server

    endpoint = server.ensure(project.root)[0] if start else server.require(project.root)
    instance = str(server.status(project.root).get("instance") or "")

    def factory(service: str, region: str) -> object:
        if service == INVOKE:  # functions run in the local executor, behind the gateway
            return server.client("lambda", region, server.status(project.root)["gateway"])
        return server.client(service, region, endpoint)

    target = identify(Aws(factory, target="local"), "local")
    target.instance, target.endpoint = instance, endpoint
    return target


def identify(aws: Aws, name: str) -> Target:
    """A target for ``aws``, with its account and partition read from STS."""
    ident = aws.call("sts", "us-east-1", "get_caller_identity")
    partition = ident["Arn"].split(":")[1] if ident.get("Arn") else "aws"
    return Target(name, aws, ident["Account"], partition)
