"""What ``shardkit status`` says: a verdict from what was observed, never from the record alone.

The deploy engine looks (read-only calls) at what exists - every recorded resource, every
registry's map, the unfinished journals, the local cloud's instance - and :func:`assess` turns
those observations into one status and the problems behind it. It is pure, so every way a
deployment can be broken is a plain test of it. A deployment is ``ok`` only when nothing at all
is wrong; otherwise it is ``failed`` (an apply did not finish) or ``drifted`` (something is
missing or differs from the record), each with a problem saying what and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["STATUSES", "Observed", "assess"]

#: Every status ``shardkit status`` can report.
STATUSES = ("nothing deployed", "ok", "destroyed", "failed", "drifted")

_FIX = "`shardkit deploy` repairs it"


@dataclass(frozen=True)
class Observed:
    """What was found. ``recorded``: the status the record gives; ``stale_registries``: the
    regions whose registry does not serve what it should (the deployed map; nothing after a
    destroy); ``unnamed``: shards the deployed map names that have no function."""

    recorded: str
    deployment: int
    resources: int
    missing: Sequence[str] = ()
    pending: Sequence[str] = ()
    restarted: bool = False
    map_problem: str = ""
    stale_registries: Sequence[str] = ()
    unnamed: Sequence[str] = ()


def assess(seen: Observed) -> tuple[str, list[str]]:
    """``(status, problems)``: one of :data:`STATUSES`, and a line per thing that is wrong."""
    problems = _problems(seen)
    if seen.recorded == "empty" and not seen.resources and not seen.pending:
        return "nothing deployed", problems
    if seen.recorded in ("failed", "applying") or seen.pending:
        return "failed", problems
    if problems:
        return "drifted", problems
    return ("destroyed" if seen.recorded == "destroyed" else "ok"), problems


def _problems(seen: Observed) -> list[str]:
    problems = []
    if seen.recorded in ("failed", "applying") or seen.pending:
        plans = f" (plan {', '.join(seen.pending)})" if seen.pending else ""
        problems.append(
            f"the last apply did not finish{plans}: run it again or `shardkit deploy` to resume"
        )
    if seen.restarted:
        problems.append(
            f"the local cloud restarted since deployment {seen.deployment} was applied: "
            "`shardkit deploy` (or `shardkit local up`) restores it"
        )
    if seen.missing:
        problems.append(
            f"{len(seen.missing)} recorded resource(s) do not exist: {_some(seen.missing)}; "
            "`shardkit deploy --refresh` re-creates them"
        )
    if seen.map_problem:
        problems.append(f"{seen.map_problem}; {_FIX}")
    if seen.stale_registries:
        what = "still serve a map" if seen.recorded == "destroyed" else "do not serve the map"
        problems.append(
            f"the registries of {', '.join(seen.stale_registries)} {what} the deployment "
            f"published; {_FIX}"
        )
    if seen.unnamed:
        problems.append(
            f"the published map names shards that have no function: {_some(seen.unnamed)}; {_FIX}"
        )
    return problems


def _some(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
