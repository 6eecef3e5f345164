"""Fixtures shared by every test tier: configurations from plain dicts, and signing keys.

Kept small and generic on purpose; a test module that needs more builds it locally.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import pytest

import shardkit

# A test run killed midway (a CI timeout, Ctrl-C twice) skips the fixtures that stop the local
# clouds it started: every server the suite starts stops by itself after 15 idle minutes or an
# hour in all, not the 8 hours and 2 days a developer's own `shardkit local up` gets. Set before
# shardkit.local.server is first imported (it reads them once); a test may still pass its own.
os.environ.setdefault("SHARDKIT_LOCAL_IDLE_TIMEOUT", "900")
os.environ.setdefault("SHARDKIT_LOCAL_MAX_LIFETIME", "3600")

#: A fixed build time (2023-11-14T22:13:20Z), so maps built in tests are reproducible.
T0 = 1_700_000_000

#: The quickstart project (examples/quickstart/shardkit.toml) written out as a dict, so tests do
#: not depend on the example file: two jurisdictions, four regions, eight shards, one replica.
QUICKSTART: dict[str, Any] = {
    "project": {"name": "quickstart"},
    "hashing": {"algorithm": "xxh64-v1", "slot_bits": 14},
    "signing": {"key_id": "quickstart-dev", "map_ttl_hours": 720},
    "regions": {
        "eu-west-1": {"jurisdiction": "eu"},
        "eu-central-1": {"jurisdiction": "eu"},
        "us-east-1": {"jurisdiction": "us"},
        "us-west-2": {"jurisdiction": "us"},
    },
    "residency": {"default": "us", "rules": [{"prefix": "eu:", "jurisdiction": "eu"}]},
    "groups": {
        "eu": {
            "jurisdiction": "eu",
            "regions": ["eu-west-1", "eu-central-1"],
            "shards": 4,
            "replicas": 1,
        },
        "us": {
            "jurisdiction": "us",
            "regions": ["us-east-1", "us-west-2"],
            "shards": 4,
            "replicas": 1,
            "weights": {"us-0": 2.0},
        },
    },
}


def small_quickstart(name: str, *, eu_shards: int = 4) -> dict[str, Any]:
    """The quickstart's shape, quick to build: 2^10 slots, no weights, the ``test-key``."""
    data = copy.deepcopy(QUICKSTART)
    data["project"]["name"] = name
    data["hashing"]["slot_bits"] = 10
    data["signing"] = {"key_id": "test-key", "map_ttl_hours": 24}
    data["groups"]["eu"]["shards"] = eu_shards
    del data["groups"]["us"]["weights"]
    return data


@pytest.fixture(scope="session")
def quickstart_like() -> Callable[..., dict[str, Any]]:
    """:func:`small_quickstart` as a fixture: ``quickstart_like(name, eu_shards=4)``."""
    return small_quickstart


def make_config(data: dict[str, Any]) -> shardkit.ProjectConfig:
    """A validated project configuration from a plain dict (what a parsed TOML file holds)."""
    return shardkit.ProjectConfig.model_validate(data)


@pytest.fixture(scope="session")
def config_from() -> Callable[[dict[str, Any]], shardkit.ProjectConfig]:
    """``config_from(dict) -> ProjectConfig``; session-scoped, so hypothesis tests may use it."""
    return make_config


@pytest.fixture
def quickstart_dict() -> dict[str, Any]:
    """A fresh, freely mutable copy of the quickstart configuration dict."""
    return copy.deepcopy(QUICKSTART)


@pytest.fixture(scope="session")
def quickstart_map() -> shardkit.ShardMap:
    """The quickstart map, version 1, built at :data:`T0`. Treat it as read-only."""
    return shardkit.build_map(make_config(QUICKSTART), now=T0)


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A key directory holding one ed25519 key, ``test-key``."""
    directory = tmp_path_factory.mktemp("keys")
    shardkit.create_key("test-key", directory)
    return directory


@pytest.fixture(scope="session")
def signing_key(key_dir: Any) -> shardkit.SigningKey:
    return shardkit.load_signing_key("test-key", key_dir)


@pytest.fixture(scope="session")
def trusted_keys(key_dir: Any) -> dict[str, bytes]:
    """``{key id: raw public key}`` for :func:`shardkit.decode_map`."""
    return shardkit.load_trusted_keys(key_dir)


def create_pk_sk_table(client: Any, name: str, sort_type: str = "S") -> None:
    """A pay-per-request table keyed like shardkit's state tables (``pk`` and ``sk``)."""
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": sort_type},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
    )


@pytest.fixture(scope="session")
def pk_sk_table() -> Callable[..., None]:
    """:func:`create_pk_sk_table` as a fixture: ``pk_sk_table(client, name, sort_type="S")``."""
    return create_pk_sk_table


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region in the environment, and no profile (for in-process moto)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
