"""The local cloud: moto's AWS emulation on 127.0.0.1, one shared server per project.

    up(project)        start it (or find it running)          -> LocalCloud
    ensure(project)    the same, for commands that need it    -> (endpoint, started)
    require(project)   the endpoint, or LocalCloudError       -> endpoint
    status(project)    running / stopped / stale              -> dict
    down(project)      save table items, stop, remove record  -> dict
    client(service, region, endpoint)   a boto3 client that only ever talks to the local cloud
    snapshot(project, tables) / restore_items(project)        table items across restarts

See docs/local-cloud.md and :mod:`shardkit.local.server`.
"""

from __future__ import annotations

from .errors import LocalCloudError
from .server import (
    CREDENTIALS,
    NO_DOCKER_CONFIG,
    LocalCloud,
    boto3_client_kwargs,
    client,
    down,
    ensure,
    local_dir,
    require,
    restore_items,
    snapshot,
    status,
    up,
)

__all__ = [
    "CREDENTIALS",
    "NO_DOCKER_CONFIG",
    "LocalCloud",
    "LocalCloudError",
    "boto3_client_kwargs",
    "client",
    "down",
    "ensure",
    "local_dir",
    "require",
    "restore_items",
    "snapshot",
    "status",
    "up",
]
