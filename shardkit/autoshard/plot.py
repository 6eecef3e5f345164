"""The simulator's picture: load per shard (top) and shard count with slots moved (bottom).

matplotlib is an optional dependency (``pip install 'shardkit[sim]'``); without it
:func:`plot` raises :class:`~shardkit.errors.DependencyError` saying so. The file type follows
the extension (``.png`` or ``.svg``); SVG output carries no date and fixed ids, so the same run
draws the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DependencyError, WorkloadError
from .simulate import SimResult

__all__ = ["plot"]

FORMATS = (".png", ".svg")


def plot(result: SimResult, path: Path) -> Path:
    """Draw ``result`` to ``path`` (.png or .svg) and return the path."""
    if path.suffix.lower() not in FORMATS:
        raise WorkloadError(
            f"--plot {path}: the picture must end in .png or .svg",
            hint="name the file e.g. autoshard.svg",
        )
    plt = _pyplot()
    minutes = [r.t / 60 for r in result.rows]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    _loads(top, result, minutes)
    _shards(bottom, result, minutes)
    fig.suptitle(f"{result.policy} policy, workload {result.workload} (group {result.group})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".svg":
        plt.rcParams["svg.hashsalt"] = "shardkit"
        fig.savefig(path, format="svg", metadata={"Date": None})
    else:
        fig.savefig(path, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def _loads(ax: Any, result: SimResult, minutes: list[float]) -> None:
    for series in result.shard_loads.values():
        ax.plot(minutes, series, linewidth=0.8, alpha=0.7)
    ax.plot(minutes, [r.load_max for r in result.rows], color="black", linewidth=1.4, label="max")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8, label="target")
    ax.set_ylabel("load per shard (x target)")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)


def _shards(ax: Any, result: SimResult, minutes: list[float]) -> None:
    ax.step(minutes, [r.shards for r in result.rows], where="post", color="tab:blue")
    ax.set_ylabel("shards", color="tab:blue")
    ax.set_xlabel("virtual time (minutes)")
    ax.grid(alpha=0.3)
    moved = ax.twinx()
    share = [100 * r.slots_moved / result.slots for r in result.rows]
    moved.bar(minutes, share, width=result.window_s / 60, color="tab:orange", alpha=0.6)
    moved.set_ylabel("slots moved (% of group)", color="tab:orange")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise DependencyError(
            "drawing the picture needs matplotlib, which is not installed",
            hint="pip install 'shardkit[sim]' (or drop --plot)",
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
