"""docs/architecture.md §4.3 at deploy time: no shard is ever placed in a region outside its
jurisdiction."""

from __future__ import annotations

from typing import Any

import pytest

import shardkit
from shardkit.blueprint import CodeArtifact, expand, load_definition
from shardkit.errors import PlanningError

CODE = CodeArtifact(key="artifacts/code/x.zip", sha256="x")


def _expand(shard_map: shardkit.ShardMap, config: Any) -> Any:
    return expand(
        load_definition("stateful-inference-proxy"),
        config=config,
        shard_map=shard_map,
        account="123456789012",
        code=CODE,
    )


def test_every_shard_resource_is_in_a_region_of_the_shards_jurisdiction(
    quickstart_map: shardkit.ShardMap, quickstart_dict: dict[str, Any]
) -> None:
    blueprint = _expand(quickstart_map, shardkit.ProjectConfig.model_validate(quickstart_dict))
    owned = [r for r in blueprint.resources if r.shard is not None]
    assert owned
    for resource in owned:
        shard = quickstart_map.shard(resource.shard)
        assert resource.region == shard.region
        assert quickstart_map.regions[resource.region] == shard.jurisdiction


def test_a_shard_placed_outside_its_jurisdiction_is_refused(
    quickstart_map: shardkit.ShardMap,
    quickstart_dict: dict[str, Any],
    signing_key: Any,
    trusted_keys: dict[str, bytes],
) -> None:
    # A private copy of the map (decoding builds new objects) with one eu shard moved to the US.
    copy = shardkit.decode_map(
        shardkit.encode_map(quickstart_map, signing_key.key_id, signing_key.sign),
        trusted_keys,
        now=0,
    )
    copy.shard("eu-0").region = "us-east-1"
    with pytest.raises(PlanningError, match="'eu-0' of jurisdiction 'eu' would be deployed"):
        _expand(copy, shardkit.ProjectConfig.model_validate(quickstart_dict))
