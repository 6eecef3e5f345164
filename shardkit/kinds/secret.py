"""``secret``: a Secrets Manager secret whose value shardkit supplies at apply time.

The shipped blueprint keeps the project's map signing key in one, in the home region of an
autoshard project, so the auto-shard controller function can sign the maps it publishes without
the project directory (docs/autoshard.md). The value never enters a blueprint, plan or record:
``value_from`` names which of the apply's secret payloads (:attr:`Context.secrets`) it is, and
``value_sha256`` - its hash - is what the properties hold, so a new value is a changed resource
(an update step) and an unchanged one is no step at all. Reading it is granted by the readers'
own role policies (the controller role's ``secretsmanager:GetSecretValue`` on this ARN alone).
The template creates the secret without its value: ``shardkit deploy`` puts it.

Deleted without a recovery window: its value is a copy of a key the project still holds, and a
secret pending deletion would block re-creating it under the same name.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ..errors import AwsConflictError, DeployError
from ._calls import delete_quietly
from ._spec import Context, KindSpec, Probe, Props, RenderContext, Rendered

if TYPE_CHECKING:
    from ..blueprint.model import Resource


class SecretProps(Props):
    value_from: Literal["signing_key"] = Field(
        description="the payload the apply supplies as its value: the map signing key (PEM)"
    )
    value_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 (hex) of the value: a new value updates"
    )
    description: str = Field("", max_length=2048, description="what it holds")


def _value(ctx: Context, name: str, props: SecretProps) -> bytes:
    value = ctx.secrets.get(props.value_from)
    if value is None or hashlib.sha256(value).hexdigest() != props.value_sha256:
        raise DeployError(
            f"secret {name}: the apply has no {props.value_from} of sha256 "
            f"{props.value_sha256[:12]}… to store",
            hint="plan again from the project that holds the key (`shardkit deploy`)",
        )
    return value


class Secret(KindSpec[SecretProps]):
    name = "secret"
    props = SecretProps
    cfn_type = "AWS::SecretsManager::Secret"
    cfn_prefix = "Secret"
    name_limit = 512

    def create(self, ctx: Context, region: str, name: str, props: SecretProps) -> dict[str, Any]:
        value = _value(ctx, name, props)
        try:  # adopt one of our name (a run that crashed before recording it)
            out = ctx.aws.call(
                "secretsmanager",
                region,
                "create_secret",
                resource=name,
                Name=name,
                Description=props.description,
                SecretBinary=value,
            )
        except AwsConflictError:
            return self.update(ctx, region, name, props)
        return {"arn": out["ARN"]}

    def update(self, ctx: Context, region: str, name: str, props: SecretProps) -> dict[str, Any]:
        value = _value(ctx, name, props)
        ctx.aws.call(
            "secretsmanager",
            region,
            "update_secret",
            resource=name,
            SecretId=name,
            Description=props.description,
            SecretBinary=value,
        )
        out = ctx.aws.call(
            "secretsmanager", region, "describe_secret", resource=name, SecretId=name
        )
        return {"arn": out["ARN"]}

    def delete(self, ctx: Context, region: str, name: str, props: SecretProps) -> None:
        delete_quietly(
            ctx,
            "secretsmanager",
            region,
            "delete_secret",
            name,
            SecretId=name,
            ForceDeleteWithoutRecovery=True,
        )

    def probe(self, name: str, props: SecretProps) -> Probe:
        return Probe("secretsmanager", "describe_secret", {"SecretId": name})

    def render(self, r: Resource, props: SecretProps, ctx: RenderContext) -> Rendered:
        body = {"Name": r.name, "Description": props.description, "Tags": ctx.tags(r)}
        yield ctx.id(r), {"Type": self.cfn_type, "Properties": body}

    def name_problem(self, name: str, props: SecretProps) -> str | None:
        if all(c.isalnum() or c in "/_+=.@-" for c in name):
            return None
        return "a secret name may hold only letters, digits and /_+=.@-"
