"""The autoshard policy of one group as the decision function sees it: plain, frozen data.

:func:`policy_for` reads it from the validated configuration (``[groups.NAME.autoshard]``, see
:class:`shardkit.config.models.AutoshardConfig`), together with the group facts the decisions
need - its regions (residency: new shards go only there) and its failure-domain mode.
:meth:`Policy.replace` applies overrides (the simulator's ``--policy key=value``) through the
same validation, so a bad override gets the same error a bad file would.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["Policy", "policy_for"]


@dataclass(frozen=True)
class Policy:
    """Thresholds are in units of the target load per shard (1.0 = exactly the target)."""

    group: str
    regions: tuple[str, ...]
    failure_domain: str = "region"
    mode: str = "on"
    min_shards: int = 1
    max_shards: int = 64
    target_rps: float | None = None
    target_compute_ms: float | None = None
    split_above: float = 1.2
    split_windows: int = 3
    merge_below: float = 0.6
    merge_windows: int = 12
    window_s: float = 10.0
    cooldown_s: float = 120.0
    churn_budget: float = 0.09
    rebalance_above: float = 1.25
    isolate_hot_slots: bool = True
    hot_slot_share: float = 0.5

    def budget(self, slots: int) -> int:
        """Slots that may move in one round: ``churn_budget`` of the group's, at least one."""
        return max(1, math.floor(self.churn_budget * slots + 1e-9))

    def utilization(self, rps: Any, compute_ms: Any) -> Any:
        """Load in target units: the higher of requests/s and compute ms/s over their targets
        (numbers or numpy arrays)."""
        parts = []
        if self.target_rps is not None:
            parts.append(rps / self.target_rps)
        if self.target_compute_ms is not None:
            parts.append(compute_ms / self.target_compute_ms)
        return parts[0] if len(parts) == 1 else _maximum(parts[0], parts[1])

    def replace(self, overrides: Mapping[str, Any]) -> Policy:
        """This policy with ``overrides`` (field -> value), validated as the file is."""
        from ..config.loader import validate_autoshard
        from ..config.models import AutoshardConfig

        group_fields = {"group", "regions", "failure_domain"}
        unknown = sorted(set(overrides) - set(AutoshardConfig.model_fields))
        if unknown:
            raise ConfigError(
                "--policy",
                [
                    f"{k}: unknown policy field; allowed: "
                    f"{', '.join(sorted(AutoshardConfig.model_fields))}"
                    for k in unknown
                ],
            )
        current = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in group_fields
        }
        checked = validate_autoshard({**current, **overrides}, "--policy")
        return dataclasses.replace(self, **checked.model_dump())


def _maximum(a: Any, b: Any) -> Any:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return max(a, b)
    import numpy as np

    return np.maximum(a, b)


def policy_for(config: Any, group: str) -> Policy | None:
    """The policy of ``group`` in a :class:`~shardkit.config.models.ProjectConfig`; None for a
    group without ``[groups.NAME.autoshard]`` (a fixed layout)."""
    g = config.groups[group]
    if g.autoshard is None:
        return None
    return Policy(
        group=group,
        regions=tuple(g.regions),
        failure_domain=g.failure_domain,
        **g.autoshard.model_dump(),
    )
