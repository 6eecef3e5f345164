"""``iam_role``: a shard function's execution role, with one inline policy.

Apply and template share the trust policy and the inline policy's name (``policy_name``,
``shardkit`` by default), so what ``shardkit deploy`` creates is what the exported template
describes. Like the template's ``Policies`` list, apply converges: an inline policy of another
name (left by a renamed ``policy_name``) is removed.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ..errors import AwsConflictError, AwsNotFoundError
from ._calls import delete_quietly
from ._spec import Context, KindSpec, Probe, Props, RenderContext, Rendered

if TYPE_CHECKING:
    from ..blueprint.model import Resource


class RoleProps(Props):
    assume_service: str = Field(
        min_length=1, description='the service that assumes it, e.g. "lambda.amazonaws.com"'
    )
    description: str = Field("", max_length=1000, description="the role's description")
    policy: dict[str, Any] | None = Field(
        None, description="an IAM policy document (a table), the role's one inline policy"
    )
    policy_name: str = Field(
        "shardkit",
        min_length=1,
        max_length=128,
        pattern=r"^[\w+=,.@-]+$",
        description="the inline policy's name",
    )


def trust_policy(p: RoleProps) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": p.assume_service},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def role_arn(ctx: Context, name: str) -> str:
    return f"arn:{ctx.partition}:iam::{ctx.account}:role/{name}"


class IamRole(KindSpec[RoleProps]):
    name = "iam_role"
    props = RoleProps
    cfn_type = "AWS::IAM::Role"
    cfn_prefix = "Role"
    name_limit = 64

    def create(self, ctx: Context, region: str, name: str, props: RoleProps) -> dict[str, Any]:
        try:
            ctx.aws.call(
                "iam",
                region,
                "create_role",
                resource=name,
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(trust_policy(props)),
                Description=props.description,
            )
        except AwsConflictError:
            return self.update(ctx, region, name, props)
        return self._policy(ctx, region, name, props)

    def update(self, ctx: Context, region: str, name: str, props: RoleProps) -> dict[str, Any]:
        call = ctx.aws.call
        call(
            "iam",
            region,
            "update_assume_role_policy",
            resource=name,
            RoleName=name,
            PolicyDocument=json.dumps(trust_policy(props)),
        )
        call(
            "iam",
            region,
            "update_role",
            resource=name,
            RoleName=name,
            Description=props.description,
        )
        return self._policy(ctx, region, name, props)

    def _policy(self, ctx: Context, region: str, name: str, props: RoleProps) -> dict[str, Any]:
        if props.policy is not None:
            ctx.aws.call(
                "iam",
                region,
                "put_role_policy",
                resource=name,
                RoleName=name,
                PolicyName=props.policy_name,
                PolicyDocument=json.dumps(props.policy),
            )
        keep = {props.policy_name} if props.policy is not None else set()
        for stray in sorted(set(_inline_policies(ctx, region, name)) - keep):
            delete_quietly(
                ctx, "iam", region, "delete_role_policy", name, RoleName=name, PolicyName=stray
            )
        return {"arn": role_arn(ctx, name)}

    def delete(self, ctx: Context, region: str, name: str, props: RoleProps) -> None:
        with contextlib.suppress(AwsNotFoundError):
            for policy in _inline_policies(ctx, region, name):
                delete_quietly(
                    ctx, "iam", region, "delete_role_policy", name, RoleName=name, PolicyName=policy
                )
        delete_quietly(ctx, "iam", region, "delete_role", name, RoleName=name)

    def probe(self, name: str, props: RoleProps) -> Probe:
        return Probe("iam", "get_role", {"RoleName": name})

    def render(self, r: Resource, props: RoleProps, ctx: RenderContext) -> Rendered:
        body: dict[str, Any] = {
            "RoleName": r.name,
            "AssumeRolePolicyDocument": trust_policy(props),
            "Tags": ctx.tags(r),
        }
        if props.description:
            body["Description"] = props.description
        if props.policy is not None:
            body["Policies"] = [{"PolicyName": props.policy_name, "PolicyDocument": props.policy}]
        yield ctx.id(r), {"Type": self.cfn_type, "Properties": body}


def _inline_policies(ctx: Context, region: str, name: str) -> list[str]:
    """The names of the role's inline policies (one page: a role has at most a few)."""
    answer = ctx.aws.call("iam", region, "list_role_policies", resource=name, RoleName=name)
    return list(answer.get("PolicyNames", []))
