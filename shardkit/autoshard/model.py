"""The simulator's model of a shard: queueing latency, cold starts and cost. Simple on purpose.

* **Latency** - each shard is an M/M/c queue: ``c`` = the group's reserved concurrency
  (``groups.NAME.concurrency``), service time = the window's mean compute ms per request. Below
  saturation the wait follows Erlang C: ``P(wait > t) = C(c, a) * exp(-(c*mu - lambda) * t)``,
  so the p99 wait is ``ln(100 * C) / (c*mu - lambda)`` (zero when ``C <= 1%``), and a shard's p99
  is its service time plus that. At or above saturation the excess requests are counted as
  *over capacity* and the shard's p99 is the function timeout.
* **Cold starts** - a new shard starts ``c`` execution environments (``init_ms`` each, billed);
  a moved slot's keys start cold on their new shard: each of its first requests, up to the
  slot's keys, reads the key's state from DynamoDB (``cold reads``).
* **Cost** - Lambda: requests x price per request + GB-s (compute and init time x memory).
  DynamoDB on-demand: reads (``reads_per_request`` for state-cache misses, cold reads, and the
  migration reading each moved key once) and writes (``writes_per_request`` fenced writes,
  ``wru_per_write`` units each - a transaction of the state put and the epoch check - plus one
  write per migrated key). Prices are the us-east-1 list prices (x86, on-demand) in
  :class:`Model`'s defaults; change them there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Model", "ShardWindow", "erlang_c", "mmc_p99_ms"]


@dataclass(frozen=True)
class Model:
    concurrency: int = 4
    memory_mb: int = 512
    timeout_s: float = 30.0
    init_ms: float = 800.0
    reads_per_request: float = 0.1
    writes_per_request: float = 1.0
    wru_per_write: float = 4.0
    lambda_per_request: float = 0.20 / 1e6
    lambda_per_gb_s: float = 0.0000166667
    dynamodb_per_read: float = 0.125 / 1e6
    dynamodb_per_write: float = 0.625 / 1e6

    def lambda_cost(self, requests: float, compute_ms: float, cold_starts: int) -> float:
        gb_s = (compute_ms + cold_starts * self.init_ms) / 1000 * self.memory_mb / 1024
        return requests * self.lambda_per_request + gb_s * self.lambda_per_gb_s

    def dynamodb_cost(self, requests: float, cold_reads: float, migrated_keys: float) -> float:
        reads = requests * self.reads_per_request + cold_reads + migrated_keys
        writes = requests * self.writes_per_request * self.wru_per_write + migrated_keys
        return reads * self.dynamodb_per_read + writes * self.dynamodb_per_write


@dataclass(frozen=True)
class ShardWindow:
    """One shard in one window, as the queueing model sees it."""

    requests: float
    p99_ms: float
    mean_ms: float
    over_capacity: float  # requests beyond what c workers could serve in the window

    @staticmethod
    def of(model: Model, requests: float, compute_ms: float, length_s: float) -> ShardWindow:
        if requests <= 0:
            return ShardWindow(0.0, 0.0, 0.0, 0.0)
        service_ms = compute_ms / requests
        lam = requests / length_s  # per second
        mu = 1000 / service_ms if service_ms > 0 else math.inf  # per worker per second
        c = model.concurrency
        if lam >= c * mu:
            over = requests - c * mu * length_s
            timeout = model.timeout_s * 1000
            return ShardWindow(requests, timeout, timeout, over)
        cw = erlang_c(c, lam / mu)
        mean_wait = cw / (c * mu - lam) * 1000
        return ShardWindow(
            requests, mmc_p99_ms(c, lam, mu, service_ms), service_ms + mean_wait, 0.0
        )


def erlang_c(c: int, a: float) -> float:
    """Erlang C: the probability that an arrival waits, with ``c`` servers and offered load
    ``a = lambda / mu`` (< c), computed with the stable Erlang B recursion."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho + rho * b)


def mmc_p99_ms(c: int, lam: float, mu: float, service_ms: float) -> float:
    """Service time plus the p99 of the M/M/c wait (see the module docstring)."""
    cw = erlang_c(c, lam / mu)
    wait = math.log(100 * cw) / (c * mu - lam) * 1000 if cw > 0.01 else 0.0
    return service_ms + wait
