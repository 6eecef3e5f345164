"""``s3_bucket``: a region's artifact bucket (code packages and the signed map registry).

Encryption, versioning, the public access block and object ownership are each one settings
dict that apply sends and the template holds, so the two views cannot disagree. The template
retains the bucket when its stack is deleted; ``shardkit destroy`` deletes it (after emptying
every object version).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ..errors import AwsConflictError, AwsNotFoundError
from ._calls import delete_quietly
from ._spec import RETAIN, Context, KindSpec, Probe, Props, RenderContext, Rendered

if TYPE_CHECKING:
    from ..blueprint.model import Resource


class BucketProps(Props):
    versioning: bool = Field(True, description="keep every object version (the map registry)")
    encryption: Literal["AES256", "aws:kms"] = Field(
        "AES256", description="default server-side encryption"
    )
    block_public_access: bool = Field(True, description="all four public access blocks on")
    object_ownership: Literal["BucketOwnerEnforced", "BucketOwnerPreferred", "ObjectWriter"] = (
        Field("BucketOwnerEnforced", description="object ownership; the default disables ACLs")
    )


def _public_access_block(p: BucketProps) -> dict[str, bool]:
    return dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"),
        p.block_public_access,
    )


def _versioning(p: BucketProps) -> dict[str, str]:
    return {"Status": "Enabled" if p.versioning else "Suspended"}


def _ownership(p: BucketProps) -> dict[str, Any]:
    return {"Rules": [{"ObjectOwnership": p.object_ownership}]}


class S3Bucket(KindSpec[BucketProps]):
    name = "s3_bucket"
    props = BucketProps
    cfn_type = "AWS::S3::Bucket"
    cfn_prefix = "ArtifactBucket"
    name_limit = 63
    bootstrap = True

    def create(self, ctx: Context, region: str, name: str, props: BucketProps) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            ctx.aws.call("s3", region, "create_bucket", resource=name, **params)
        except AwsConflictError as exc:
            if exc.code != "BucketAlreadyOwnedByYou":
                raise
        return self.update(ctx, region, name, props)

    def update(self, ctx: Context, region: str, name: str, props: BucketProps) -> dict[str, Any]:
        settings = {
            "put_public_access_block": {
                "PublicAccessBlockConfiguration": _public_access_block(props)
            },
            "put_bucket_encryption": {
                "ServerSideEncryptionConfiguration": {
                    "Rules": [
                        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": props.encryption}}
                    ]
                }
            },
            "put_bucket_versioning": {"VersioningConfiguration": _versioning(props)},
            "put_bucket_ownership_controls": {"OwnershipControls": _ownership(props)},
        }
        for operation, params in settings.items():
            ctx.aws.call("s3", region, operation, resource=name, Bucket=name, **params)
        return {"arn": f"arn:{ctx.partition}:s3:::{name}"}

    def delete(self, ctx: Context, region: str, name: str, props: BucketProps) -> None:
        with contextlib.suppress(AwsNotFoundError):
            _empty(ctx, region, name)
        delete_quietly(ctx, "s3", region, "delete_bucket", name, Bucket=name)

    def probe(self, name: str, props: BucketProps) -> Probe:
        return Probe("s3", "head_bucket", {"Bucket": name})

    def render(self, r: Resource, props: BucketProps, ctx: RenderContext) -> Rendered:
        body = {
            "BucketName": r.name,
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": props.encryption}}
                ]
            },
            "VersioningConfiguration": _versioning(props),
            "PublicAccessBlockConfiguration": _public_access_block(props),
            "OwnershipControls": _ownership(props),
            "Tags": ctx.tags(r),
        }
        # it holds the signed map registry and the code packages: never deleted with the stack
        yield ctx.id(r), {"Type": self.cfn_type, **RETAIN, "Properties": body}

    def outputs(self, r: Resource, props: BucketProps, lid: str) -> dict[str, Any]:
        return {
            lid + "Name": {
                "Description": "S3 bucket of the map registry and code packages",
                "Value": {"Ref": lid},
            }
        }

    def summary(self, name: str, outputs: Any) -> dict[str, str]:
        return {"bucket": name}


def _empty(ctx: Context, region: str, name: str) -> None:
    """Delete every object version: a versioned bucket must be empty to be deleted."""
    marker: dict[str, str] = {}
    while True:
        page = ctx.aws.call(
            "s3", region, "list_object_versions", resource=name, Bucket=name, **marker
        )
        doomed = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if doomed:
            ctx.aws.call(
                "s3",
                region,
                "delete_objects",
                resource=name,
                Bucket=name,
                Delete={"Objects": doomed, "Quiet": True},
            )
        if not page.get("IsTruncated"):
            return
        marker = {
            "KeyMarker": page["NextKeyMarker"],
            "VersionIdMarker": page["NextVersionIdMarker"],
        }
