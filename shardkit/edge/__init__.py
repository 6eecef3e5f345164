"""shardkit.edge: the compact edge runtime (docs/architecture.md §6).

An edge node answers a request from a local model when the model is confident, else from a
compute-adjacent cache governed by policy-as-code, else from the key's owning shard - and says
which in a decision record. Maps are verified once per version, off the request path.

Import budget (docs/architecture.md §3): stdlib, msgpack, xxhash and jump only; no pydantic,
boto3 or numpy (transports import boto3 lazily, and the routing client is imported by
:meth:`EdgeRuntime.create`, not here). ``tests/integration/test_edge_imports.py`` guards it.

    from shardkit.edge import CachePolicy, CacheRules, EdgeRuntime, Location, payload_field

    rules = CacheRules([CachePolicy("*", ttl_s=30, stale_if_error_s=300,
                                    cacheable=payload_field("learn", False),
                                    resident_only={"eu"})])
    edge = EdgeRuntime.create(holder, transport, rules=rules,
                              location=Location("us-east-1", "us"))
    decision = edge.infer("alice", {"text": "the shard", "learn": False})
    decision.path, decision.cache, decision.latency_s
"""

from .cache import EdgeCache
from .divergence import DivergenceMonitor
from .local import EdgeRequest, LocalModel
from .policy import CachePolicy, CacheRules, EdgePolicyError, KeyPattern, Location, payload_field
from .record import Counters, Decision
from .runtime import EdgeRuntime
from .trust import MapTrust
from .versions import ModelVersions

__all__ = [
    "CachePolicy",
    "CacheRules",
    "Counters",
    "Decision",
    "DivergenceMonitor",
    "EdgeCache",
    "EdgePolicyError",
    "EdgeRequest",
    "EdgeRuntime",
    "KeyPattern",
    "LocalModel",
    "Location",
    "MapTrust",
    "ModelVersions",
    "payload_field",
]
