"""shardkit: region-aware shards for stateful inference proxies on serverless infrastructure.

The public API is listed in ``__all__``. Names are imported on first use (PEP 562), so the
data-plane path (``shardkit.sharding.codec`` and friends) never pays for pydantic or boto3.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ApplyFailedError",
    "AutoshardError",
    "AwsAccessDeniedError",
    "AwsConflictError",
    "AwsError",
    "AwsNotFoundError",
    "AwsThrottledError",
    "AwsUnreachableError",
    "ConfigError",
    "DependencyError",
    "DeployError",
    "Deployer",
    "EdgePolicyError",
    "Group",
    "HandlerError",
    "InferenceError",
    "InvalidKeyError",
    "KeyStoreError",
    "LoadRecordError",
    "LocalCloudError",
    "LogsError",
    "MapDecodeError",
    "MapDiff",
    "MapError",
    "MapExpiredError",
    "MapHolder",
    "MapRollbackError",
    "MapSignatureError",
    "MigrationAbortedError",
    "MigrationError",
    "NoEligibleShardError",
    "Plan",
    "PlanFileError",
    "PlanStaleError",
    "PlanningError",
    "Project",
    "ProjectConfig",
    "Record",
    "RecordFormatError",
    "RegistryUnreachableError",
    "ResidencyError",
    "Result",
    "RetryPolicy",
    "RoutingClient",
    "RoutingError",
    "Shard",
    "ShardMap",
    "ShardkitError",
    "SigningKey",
    "SlotMove",
    "StateLockedError",
    "TableWriteError",
    "WorkloadError",
    "__version__",
    "build_map",
    "build_signed",
    "client_for_project",
    "create_key",
    "decode_map",
    "diff_maps",
    "encode_map",
    "hash_key",
    "load_config",
    "load_project",
    "load_signing_key",
    "load_trusted_keys",
    "stateless_shard",
    "transport_for_project",
]

_WHERE = {
    "ConfigError": "errors",
    "KeyStoreError": "errors",
    "MapDecodeError": "errors",
    "MapError": "errors",
    "MapExpiredError": "errors",
    "MapRollbackError": "errors",
    "MapSignatureError": "errors",
    "NoEligibleShardError": "errors",
    "PlanningError": "errors",
    "RegistryUnreachableError": "errors",
    "ResidencyError": "errors",
    "RoutingError": "errors",
    "ShardkitError": "errors",
    "AutoshardError": "errors",
    "AwsAccessDeniedError": "errors",
    "AwsConflictError": "errors",
    "AwsNotFoundError": "errors",
    "AwsThrottledError": "errors",
    "AwsUnreachableError": "errors",
    "DependencyError": "errors",
    "EdgePolicyError": "errors",
    "HandlerError": "errors",
    "LoadRecordError": "errors",
    "LogsError": "errors",
    "MigrationAbortedError": "errors",
    "MigrationError": "errors",
    "TableWriteError": "errors",
    "WorkloadError": "errors",
    "Group": "sharding.shardmap",
    "Shard": "sharding.shardmap",
    "ShardMap": "sharding.shardmap",
    "MapDiff": "sharding.diff",
    "SlotMove": "sharding.diff",
    "diff_maps": "sharding.diff",
    "build_map": "config.build",
    "decode_map": "sharding.codec",
    "encode_map": "sharding.codec",
    "hash_key": "sharding.hashing",
    "stateless_shard": "sharding.hashing",
    "Project": "config",
    "ProjectConfig": "config",
    "load_config": "config",
    "load_project": "config",
    "SigningKey": "keys",
    "create_key": "keys",
    "load_signing_key": "keys",
    "load_trusted_keys": "keys",
    "ApplyFailedError": "errors",
    "InferenceError": "errors",
    "InvalidKeyError": "errors",
    "AwsError": "errors",
    "DeployError": "errors",
    "Deployer": "deploy.engine",
    "LocalCloudError": "errors",
    "MapHolder": "sharding.holder",
    "Plan": "deploy.plan",
    "PlanFileError": "errors",
    "PlanStaleError": "errors",
    "Record": "deploy.record",
    "RecordFormatError": "errors",
    "StateLockedError": "errors",
    "Result": "routing.client",
    "RetryPolicy": "routing.client",
    "RoutingClient": "routing.client",
    "build_signed": "config.build",
    "client_for_project": "deploy.client",
    "transport_for_project": "deploy.client",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'shardkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .config import Project, ProjectConfig, load_config, load_project
    from .config.build import build_map, build_signed
    from .deploy.client import client_for_project, transport_for_project
    from .deploy.engine import Deployer
    from .deploy.plan import Plan
    from .errors import (
        ApplyFailedError,
        AwsError,
        ConfigError,
        DeployError,
        InvalidKeyError,
        KeyStoreError,
        LocalCloudError,
        MapDecodeError,
        MapError,
        MapExpiredError,
        MapRollbackError,
        MapSignatureError,
        NoEligibleShardError,
        PlanFileError,
        PlanningError,
        PlanStaleError,
        RegistryUnreachableError,
        ResidencyError,
        RoutingError,
        ShardkitError,
    )
    from .keys import SigningKey, create_key, load_signing_key, load_trusted_keys
    from .routing.client import Result, RetryPolicy, RoutingClient
    from .sharding.codec import decode_map, encode_map
    from .sharding.diff import MapDiff, SlotMove, diff_maps
    from .sharding.hashing import hash_key, stateless_shard
    from .sharding.holder import MapHolder
    from .sharding.shardmap import Group, Shard, ShardMap
