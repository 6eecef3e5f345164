"""``shardkit simulate DIR``: replay a workload against the autoshard policy (or a baseline)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..autoshard.baselines import BASELINES
from ..autoshard.model import Model
from ..autoshard.policy import Policy, policy_for
from ..autoshard.simulate import SimResult, simulate
from ..autoshard.workload import PRESETS, TRACE_FORMATS, Workload, parse_workload, read_trace
from ..config import Project, load_project
from ..config.build import build_map
from ..errors import WorkloadError
from ..sharding.shardmap import ShardMap
from .output import console, emit_json, json_option, newest_map, open_map

_PATH = click.Path(path_type=Path)


@click.command("simulate")
@click.argument("project_dir", type=_PATH)
@click.option("--group", help="The group to simulate [default: the first with a policy].")
@click.option(
    "--workload",
    "spec",
    metavar="NAME[:k=v,...]",
    help=f"A synthetic workload: {', '.join(PRESETS)}.",
)
@click.option("--trace", type=_PATH, help="Replay a recorded trace instead.")
@click.option(
    "--trace-format",
    type=click.Choice(TRACE_FORMATS),
    help="jsonl (shardkit's), edge (decision records) or records (load records) "
    "[default: records for .msgpack, else jsonl].",
)
@click.option(
    "--trace-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="Requests/s of an edge trace whose records carry no time.",
)
@click.option(
    "--duration",
    default=None,
    metavar="TIME",
    help="Virtual time to simulate: seconds, or 30m, 2h [default: 1h; a trace's length].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the workload.")
@click.option(
    "--policy",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a field of [groups.NAME.autoshard] (repeatable).",
)
@click.option(
    "--baseline", type=click.Choice(sorted(BASELINES)), help="Run a baseline policy instead."
)
@click.option("--plot", type=_PATH, help="Draw load and shard count over time (.png or .svg).")
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Table: every Nth window, plus every window with a change.",
)
@json_option
def simulate_cmd(
    project_dir: Path,
    group: str | None,
    spec: str | None,
    trace: Path | None,
    trace_format: str | None,
    trace_rate: float,
    duration: str | None,
    seed: int,
    overrides: tuple[str, ...],
    baseline: str | None,
    plot: Path | None,
    every: int,
    json_: bool,
) -> None:
    """Replay a workload on a virtual clock through the real autoshard decision function.

    Per window: shards, max/mean load, slots moved, cold starts, cost and residency
    violations; with --plot, a picture of load per shard and shard count over time. Same seed,
    same result. docs/autoshard.md describes workloads, trace formats and the model.
    """
    project = load_project(project_dir)
    shard_map = _start_map(project)
    policy = _policy(project, group, overrides)
    workload = _workload(spec, trace, trace_format, trace_rate, shard_map, policy)
    seconds = _duration(duration, workload)
    g = project.config.groups[policy.group]
    model = Model(concurrency=g.concurrency, memory_mb=g.memory_mb, timeout_s=g.timeout_s)
    result = simulate(
        shard_map,
        policy,
        workload,
        duration_s=seconds,
        seed=seed,
        model=model,
        decider=baseline or "shardkit",
    )
    drawn = None
    if plot is not None:
        from ..autoshard.plot import plot as draw

        drawn = draw(result, plot)
    if json_:
        emit_json({**result.to_dict(), "plot": str(drawn) if drawn else None})
        return
    _print(result, every, drawn)


def _start_map(project: Project) -> ShardMap:
    """The project's newest map (built or deployed), else one built from its configuration."""
    if newest_map(project)[1] is not None:
        return open_map(project.root, project.keys_dir, allow_expired=True)
    return build_map(project.config, now=0)


def _policy(project: Project, group: str | None, overrides: tuple[str, ...]) -> Policy:
    groups = project.config.groups
    if group is None:
        with_policy = [n for n, g in sorted(groups.items()) if g.autoshard is not None]
        group = with_policy[0] if with_policy else sorted(groups)[0]
    if group not in groups:
        raise WorkloadError(
            f"--group {group!r}: the project has no such group",
            hint=f"groups: {', '.join(sorted(groups))}",
        )
    g = groups[group]
    base = policy_for(project.config, group) or Policy(group, tuple(g.regions), g.failure_domain)
    values = dict(_override(item) for item in overrides)
    if g.autoshard is None and not ({"target_rps", "target_compute_ms"} & set(values)):
        raise WorkloadError(
            f"group {group!r} has no [groups.{group}.autoshard] policy",
            hint="add one to shardkit.toml, or pass --policy target_rps=... to try one",
        )
    return base.replace(values) if values else base


def _override(item: str) -> tuple[str, Any]:
    key, eq, text = item.partition("=")
    if not eq or not key.strip():
        raise WorkloadError(f"--policy {item!r}: expected KEY=VALUE, e.g. split_above=1.5")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word, e.g. mode=dry-run
    return key.strip(), value


def _workload(
    spec: str | None,
    trace: Path | None,
    fmt: str | None,
    rate: float,
    shard_map: ShardMap,
    policy: Policy,
) -> Workload:
    if (spec is None) == (trace is None):
        raise WorkloadError(
            "give exactly one of --workload NAME[:k=v,...] and --trace FILE",
            hint=f"synthetic workloads: {', '.join(PRESETS)}",
        )
    if spec is not None:
        return parse_workload(spec, shard_map.slot_bits)
    assert trace is not None
    fmt = fmt or ("records" if trace.suffix == ".msgpack" else "jsonl")
    return read_trace(trace, fmt, shard_map, policy.group, policy.window_s, rate=rate)


def _duration(text: str | None, workload: Workload) -> float:
    if text is None:
        return workload.duration_s or 3600.0
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 30 * 86400:
        raise WorkloadError(
            f"--duration {text!r}: must be a time such as 600, 30m or 2h (at most 30 days)"
        )
    return seconds


def _print(result: SimResult, every: int, drawn: Path | None) -> None:
    table = Table(
        "t",
        "shards",
        "max",
        "mean",
        "max/mean",
        "p99 ms",
        "moved",
        "cold",
        "cost $",
        "resid.",
        "decision",
        title=f"{result.policy} policy, workload {result.workload}, group {result.group} "
        f"({result.slots:,} slots, {result.window_s:g} s windows; load in x target)",
    )
    for i, r in enumerate(result.rows):
        if i % every and not r.actions:
            continue
        table.add_row(
            _clock(r.t),
            str(r.shards),
            f"{r.load_max:.2f}",
            f"{r.load_mean:.2f}",
            f"{r.imbalance:.2f}",
            f"{r.p99_ms:,.0f}",
            f"{r.slots_moved:,}",
            str(r.cold_starts),
            f"{r.cost_usd:.4f}",
            str(r.violations),
            r.actions or "-",
        )
    console.print(table)
    s = result.summary()
    console.print(
        f"imbalance (max/mean) p50 {s['imbalance_p50']:.2f}, p99 {s['imbalance_p99']:.2f}; "
        f"slots moved {s['slots_moved']:,} in {s['rounds_with_moves']} rounds (at most "
        f"{s['moved_share_max']:.1%} of the group in one); splits {s['splits']}, merges "
        f"{s['merges']}, flaps {s['flaps']}; cold starts {s['cold_starts']}; cost "
        f"${s['cost_usd']:.2f}; requests over capacity {s['over_capacity']:.2%}; residency "
        f"violations {s['violations']}",
        soft_wrap=True,
    )
    if drawn:
        console.print(f"picture: {drawn}", soft_wrap=True)


def _clock(t: float) -> str:
    return f"{int(t // 3600)}:{int(t % 3600 // 60):02d}:{int(t % 60):02d}"
