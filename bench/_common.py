"""What the bench/ scripts share: the header, plain tables, targets, timing and import-time stats.

The scripts import it as ``from _common import ...``: ``python bench/bench_x.py`` puts bench/ first
on sys.path, so no package or install is needed. One copy keeps the four reports in one format, so
they read alike and a change to the format lands in all of them at once.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import io
import os
import platform
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import shardkit

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# The venv's own CLI, so a run does not pick up another install of shardkit on PATH.
SHARDKIT = shutil.which("shardkit", path=str(Path(PY).parent)) or "shardkit"
NOW = 1_700_000_000  # fixed build time, so every run builds the same maps
TWO_REGIONS = ("eu-west-1", "eu-central-1")


# -- command line ---------------------------------------------------------------------------------


def parse_args(
    doc: str | None,
    argv: Sequence[str] | None,
    quick_help: str,
    profile_help: str = "",
    sections: Sequence[str] = (),
) -> argparse.Namespace:
    """Every script's options: --quick (a smoke run), and where it has them --profile and
    --only SECTION (run one section). The description is the first paragraph of the script's
    docstring."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    if profile_help:
        ap.add_argument("--profile", action="store_true", help=profile_help)
    if sections:
        ap.add_argument("--only", choices=sections, help="run this section alone")
    return ap.parse_args(argv)


# -- header ---------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name: platform.processor() is often empty on Linux, /proc/cpuinfo is not."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), cpu)
    except OSError:
        return cpu


def load_average() -> str:
    """The 1/5/15-minute load average: on a shared VM timings move with it, so reports print it."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def ver(dist: str) -> str:
    """A distribution's installed version, or "?": a missing package must not stop the report."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def print_header(title: str, quick: bool, lines: dict[str, str], load_label: str = "") -> None:
    """Print the run's context, so results can be filed and compared with what produced them.

    ``lines`` (packages, settings, ...) follow date, python, cpu and platform; ``load_label``
    adds the load average to the cpu line under that name.
    """
    cpu = f"{cpu_model()}  ({os.cpu_count()} logical CPUs)"
    if load_label:
        cpu += f"; {load_label} {load_average()}"
    rows = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({PY})",
        "cpu": cpu,
        "platform": platform.platform(),
        **lines,
    }
    print(title + ("  (--quick)" if quick else ""))
    for label, text in rows.items():
        print(f"  {label:<9} {text}")
    sys.stdout.flush()


# -- tables and targets ---------------------------------------------------------------------------


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> None:
    """A plain-text table (first column left, the rest right-aligned): readable in a terminal and
    in a pasted log, with no dependency."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print()
    print(title)
    print("=" * len(title))
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    for note in notes:
        print(f"  * {note}")
    sys.stdout.flush()


@dataclass
class Target:
    name: str
    measured: str
    limit: str
    ok: bool


@dataclass
class Report:
    """What a run collects for its end: targets (PASS/MISS, never a failure) and the commands
    to reproduce its measurements."""

    targets: list[Target] = field(default_factory=list)
    commands: list[tuple[str, str]] = field(default_factory=list)

    def target(
        self,
        name: str,
        value: float,
        limit: float,
        fmt: str,
        unit: str,
        higher_is_better: bool = False,
    ) -> None:
        ok = value >= limit if higher_is_better else value <= limit
        op = ">=" if higher_is_better else "<="
        self.targets.append(
            Target(name, f"{value:{fmt}} {unit}".strip(), f"{op} {limit:{fmt}} {unit}".strip(), ok)
        )

    def command(self, label: str, text: str) -> None:
        """Remember a command for the list at the end; one recorded twice is listed once."""
        if (label, text) not in self.commands:
            self.commands.append((label, text))

    def finish(self, t_start: float, commands: str = "", load_at_end: bool = False) -> None:
        """The Targets table, the commands under the heading ``commands`` (if given) and the
        summary line; ``load_at_end`` adds the load average, to compare with the header's."""
        print_table(
            "Targets",
            ["target", "measured", "limit", "result"],
            [[t.name, t.measured, t.limit, "PASS" if t.ok else "MISS"] for t in self.targets],
        )
        if commands:
            print(f"\n{commands}")
            for label, text in self.commands:
                print(f"  {label}: {text}")
        missed = sum(not t.ok for t in self.targets)
        load = f"load average at end {load_average()}; " if load_at_end else ""
        print(
            f"\n{len(self.targets) - missed}/{len(self.targets)} targets met; {load}"
            f"total run time {time.perf_counter() - t_start:.1f} s"
        )


# -- timing and statistics ------------------------------------------------------------------------


@contextmanager
def no_gc() -> Iterator[None]:
    """Garbage collector off while timing, so a collection does not land in one sample only."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def med(values: Sequence[float]) -> float:
    """Median: every timing is reported as one, as it shrugs off the odd slow repeat."""
    return statistics.median(values)


def pct(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (sorting once serves every q)."""
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))]


def loop_calls(f: Callable[[str], Any], keys: list[str]) -> Callable[[], None]:
    """``for k in keys: f(k)`` as one timed call; defaults bind f and keys as fast locals."""

    def run(f: Callable[[str], Any] = f, keys: list[str] = keys) -> None:
        for k in keys:
            f(k)

    return run


def show_profile(title: str, prof: cProfile.Profile, limit: int = 14) -> None:
    """The top ``limit`` functions of a profile by own time, without pstats' preamble."""
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(limit)
    print()
    print(f"profile: {title}")
    print("-" * (9 + len(title)))
    text = out.getvalue()
    start = text.find("   ncalls")
    print(text[start:].rstrip() if start >= 0 else text.rstrip())


# -- processes ------------------------------------------------------------------------------------


def proc_stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name, which may hold spaces or ')'."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def stat_cpu_s(fields: Sequence[str]) -> float:
    """user + sys CPU seconds from proc_stat() fields."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int | None) -> float | None:
    """user + sys CPU seconds of a live process; None when there is none (no pid, or gone)."""
    if pid is None:
        return None
    try:
        return stat_cpu_s(proc_stat(pid))
    except OSError:
        return None


# -- -X importtime --------------------------------------------------------------------------------

_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


@dataclass
class Imp:
    name: str
    depth: int
    self_us: int
    cum_us: int
    parent: str


def parse_importtime(text: str) -> list[Imp]:
    """-X importtime lines (children are printed before their parent) -> rows with parents."""
    rows: list[Imp] = []
    waiting: dict[int, list[Imp]] = {}
    for line in text.splitlines():
        m = _IMPORTTIME.match(line)
        if not m:
            continue
        imp = Imp(m[4], len(m[3]) // 2, int(m[1]), int(m[2]), "")
        for child in waiting.pop(imp.depth + 1, []):
            child.parent = imp.name
        waiting.setdefault(imp.depth, []).append(imp)
        rows.append(imp)
    return rows


def package_of(module: str) -> str:
    """A module's top-level package, with the standard library as one "(stdlib)" group."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top.startswith("_"):
        return "(stdlib)"
    return top


@dataclass
class ImportStats:
    """Medians over several -X importtime runs, per module, in ms; ``mine`` leaves out the
    modules of the floor runs (`python -c pass`), i.e. the interpreter's own start-up."""

    first: dict[str, Imp]  # each module's row in the first run it appears in (depth, parent)
    self_ms: dict[str, float]
    cum_ms: dict[str, float]
    mine: list[str]
    total: float  # summed self ms of ``mine``
    floor_total: float  # summed self ms of the floor runs (median)


def import_stats(runs: list[list[Imp]], floor: list[list[Imp]]) -> ImportStats:
    floor_names = {i.name for rows in floor for i in rows}
    by_name: dict[str, list[Imp]] = {}
    for rows in runs:
        for i in rows:
            by_name.setdefault(i.name, []).append(i)
    self_ms = {n: med([i.self_us for i in imps]) / 1000 for n, imps in by_name.items()}
    mine = [n for n in by_name if n not in floor_names]
    return ImportStats(
        first={n: imps[0] for n, imps in by_name.items()},
        self_ms=self_ms,
        cum_ms={n: med([i.cum_us for i in imps]) / 1000 for n, imps in by_name.items()},
        mine=mine,
        total=sum(self_ms[n] for n in mine),
        floor_total=med([sum(i.self_us for i in rows) for rows in floor]) / 1000 if floor else 0.0,
    )


def top_import_rows(s: ImportStats, top: int, scale_ms: float) -> list[list[str]]:
    """The ``top`` modules by cumulative time, indented by depth, with their share of
    ``scale_ms``: module, imported by, self ms, cumulative ms, share."""
    names = sorted(s.mine, key=lambda n: -s.cum_ms[n])[:top]
    return [
        [
            ("  " * min(s.first[n].depth, 6)) + n,
            s.first[n].parent or "(top level)",
            f"{s.self_ms[n]:,.1f}",
            f"{s.cum_ms[n]:,.1f}",
            f"{100 * s.cum_ms[n] / scale_ms:.0f}%",
        ]
        for n in names
    ]


def package_rows(s: ImportStats, top: int = 10) -> list[list[str]]:
    """Self time summed by top-level package, largest first: package, modules, self ms, share."""
    groups: dict[str, list[float]] = {}
    for n in s.mine:
        groups.setdefault(package_of(n), []).append(s.self_ms[n])
    return [
        [pkg, str(len(v)), f"{sum(v):,.1f}", f"{100 * sum(v) / s.total:.0f}%"]
        for pkg, v in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
    ]


# -- signing key ----------------------------------------------------------------------------------


def signing_key(key_id: str = "bench") -> Any:
    """A new signing key, loaded: its files live in a temp dir that is gone on return, so a run
    leaves no key behind and never touches a real one."""
    with tempfile.TemporaryDirectory() as tmp:
        shardkit.create_key(key_id, tmp)
        return shardkit.load_signing_key(key_id, tmp)


# -- shard map configs ----------------------------------------------------------------------------


def one_group_config(
    shards: int | list[dict[str, str]], replicas: int = 0, regions: Sequence[str] = ("eu-west-1",)
) -> Any:
    """One group serving one jurisdiction; ``shards`` is a count or an explicit shard list."""
    return shardkit.ProjectConfig.model_validate(
        {
            "project": {"name": "bench"},
            "hashing": {"algorithm": "xxh64-v1", "slot_bits": 14},
            "signing": {"key_id": "bench"},
            "regions": {r: {"jurisdiction": "eu"} for r in regions},
            "residency": {"default": "eu"},
            "groups": {
                "g": {
                    "jurisdiction": "eu",
                    "regions": list(regions),
                    "shards": shards,
                    "replicas": replicas,
                }
            },
        }
    )


def quickstart_config() -> Any:
    """The quickstart's configuration, read from examples/quickstart/shardkit.toml itself."""
    return shardkit.load_config(REPO / "examples" / "quickstart" / "shardkit.toml")
