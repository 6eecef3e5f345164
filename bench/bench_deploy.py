#!/usr/bin/env python
"""Benchmark `shardkit deploy` onto the local cloud: 192 shards, 64 in each of 3 regions.

Run from the repository root (with the project's venv active)::

    python bench/bench_deploy.py            # full run, ~2-5 min (3 first deploys per variant)
    python bench/bench_deploy.py --quick    # smoke run, ~1.5 min

Every timing is the wall clock of a whole command (`shardkit deploy DIR --local --yes --json` as a
subprocess), because that is what a user waits for: interpreter start, imports, config validation,
planning, the AWS calls and the JSON output. Measured:

1. the first deploy of a fresh project, with the local cloud already up and cold (the deploy
   starts the cloud itself), each on a fresh project directory and a fresh local cloud;
2. the no-op redeploy, round-robin with floors in the same run (`python -c pass`, `import boto3`,
   `shardkit --help`, ...), checking from its --json output that nothing changed;
3. where the no-op's time goes: `python -X importtime` of the command and a cProfile of it.

The last section lists the targets with PASS/MISS. See bench/README.md for what every column
means. This is not part of the test suite and never fails on a MISS: it only reports.
"""

from __future__ import annotations

import json
import os
import pstats
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    PY,
    REPO,
    SHARDKIT,
    Imp,
    Report,
    import_stats,
    med,
    package_rows,
    parse_args,
    parse_importtime,
    print_header,
    print_table,
    proc_cpu_s,
    top_import_rows,
    ver,
)

import shardkit

REGIONS = ("eu-west-1", "eu-central-1", "eu-north-1")
SHARDS = 192  # round-robin over REGIONS: 64 shards in each region

# "64 shards x 3 regions", read as: one group (jurisdiction "eu") over three regions with
# shards = 192 spread round-robin, i.e. 64 shards in each region; replicas = 1 puts every slot's
# replica in another region (failure_domain = "region"). One map, one jurisdiction.
PROJECT_TOML = f"""\
[project]
name = "bench"
target = "local"

[hashing]
algorithm = "xxh64-v1"
slot_bits = 14

[signing]
key_id = "bench-dev"
create_if_missing = true

[regions]
{chr(10).join(f'{r} = {{ jurisdiction = "eu" }}' for r in REGIONS)}

[residency]
default = "eu"

[groups.eu]
jurisdiction = "eu"
regions = [{", ".join(f'"{r}"' for r in REGIONS)}]
shards = {SHARDS}
replicas = 1
"""

# One shard in one region: the warm-up deploy (fills the bytecode cache on both sides).
TINY_TOML = """\
[project]
name = "warmup"

[signing]
key_id = "warmup-dev"
create_if_missing = true

[regions]
eu-west-1 = { jurisdiction = "eu" }

[residency]
default = "eu"

[groups.eu]
jurisdiction = "eu"
regions = ["eu-west-1"]
shards = 1
"""

# The no-op deploy under cProfile, in a fresh interpreter (so its imports are in the profile),
# running the CLI's main() in-process.
PROFILE_SCRIPT = """\
import contextlib, cProfile, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
prof = cProfile.Profile()
t0 = time.perf_counter()
prof.enable()
from shardkit.cli.main import main
with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
    main(argv)
prof.disable()
print(time.perf_counter() - t0)
prof.dump_stats(out)
"""


@dataclass(frozen=True)
class Params:
    quick: bool
    first_runs: int  # first deploys per variant (cloud up / cold)
    noop_runs: int  # no-op deploys (and floor runs, round-robin)
    importtime_runs: int


FULL = Params(False, 3, 9, 3)
QUICK = Params(True, 1, 5, 1)


# -- output ---------------------------------------------------------------------------------------


def shown(cmd: Sequence[str], env_note: str = "") -> str:
    """A command as the list at the end shows it, with the environment it needs."""
    return shlex.join(cmd) + (f"   [{env_note}]" if env_note else "")


def caller_bytecode() -> str:
    """The caller's bytecode variables as "K=V, ..." ("" if neither is set): they decide whether
    shardkit is compiled on every run, so the report states them."""
    return ", ".join(
        f"{k}={os.environ[k]}"
        for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
        if k in os.environ
    )


def header(params: Params, cache: Path) -> None:
    header_lines = {
        "packages": f"shardkit {shardkit.__version__}, boto3 {ver('boto3')}, botocore "
        f"{ver('botocore')}, moto {ver('moto')}, pydantic {ver('pydantic')}, click "
        f"{ver('click')}, rich {ver('rich')}",
        "project": f"1 group 'eu' over {', '.join(REGIONS)}; shards = {SHARDS} round-robin "
        f"(= {SHARDS // len(REGIONS)} per region), replicas = 1, slot_bits = 14, "
        "code = the quickstart's app/",
        "settings": f"first deploys: {params.first_runs} per variant; no-op deploys and floors: "
        f"{params.noop_runs} each, round-robin; importtime: "
        f"{params.importtime_runs} runs",
        "bytecode": f"commands run with PYTHONPYCACHEPREFIX={cache} (this run's own cache, "
        "filled by the warm-up) and without PYTHONDONTWRITEBYTECODE, so they use "
        "cached bytecode as an installed CLI does; caller's environment: "
        f"{caller_bytecode() or 'neither variable set'}",
    }
    print_header(
        "shardkit deploy benchmark", params.quick, header_lines, load_label="load average at start"
    )


# -- commands -------------------------------------------------------------------------------------


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + sys of the command's own process
    out: str
    err: str


def run(cmd: Sequence[str], env: dict[str, str], *, timeout: float = 900) -> Run:
    """Run ``cmd`` to completion; its wall time and CPU time. Raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-6:])
        raise RuntimeError(f"`{shlex.join(cmd)}` exited with {proc.returncode}: {tail}")
    return Run(wall, cpu, proc.stdout, proc.stderr)


def deploy_cmd(project: Path) -> list[str]:
    return [SHARDKIT, "deploy", str(project), "--local", "--yes", "--json"]


def up_cmd(project: Path) -> list[str]:
    return [SHARDKIT, "local", "up", str(project), "--json", "--timeout", "120"]


def down_cmd(project: Path) -> list[str]:
    return [SHARDKIT, "local", "down", str(project), "--json"]


def bench_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def new_project(root: Path, name: str, toml: str = PROJECT_TOML) -> Path:
    project = root / name
    project.mkdir()
    (project / "shardkit.toml").write_text(toml)
    shutil.copytree(
        REPO / "examples" / "quickstart" / "app",
        project / "app",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return project


def server_pid(project: Path) -> int | None:
    try:
        record = json.loads((project / ".shardkit" / "local" / "cloud.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("pid") if isinstance(record.get("pid"), int) else None


# -- 1. first deploy ------------------------------------------------------------------------------


@dataclass
class DeployRun:
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    steps: int
    mutating: int


def first_deploy(project: Path, env: dict[str, str], *, cloud_up: bool) -> DeployRun:
    pid = server_pid(project) if cloud_up else None
    server_before = proc_cpu_s(pid) if cloud_up else 0.0
    r = run(deploy_cmd(project), env)
    out = json.loads(r.out)
    assert out["changed"] is True, out
    pid = pid or server_pid(project)
    server_after = proc_cpu_s(pid)
    server = (
        server_after - server_before
        if server_after is not None and server_before is not None
        else None
    )
    return DeployRun(r.wall_s, r.cpu_s, server, int(out["steps_done"]), int(out["mutating_calls"]))


def warm_up(p: Params, rep: Report, tmp: Path, env: dict[str, str], live: list[Path]) -> None:
    """Fill this run's bytecode cache: every command once, and a 1-shard deploy end to end."""
    t0 = time.perf_counter()
    tiny = new_project(tmp, "warmup", TINY_TOML)
    live.append(tiny)
    run([SHARDKIT, "--help"], env)
    run([PY, "-c", "import boto3"], env)
    run(up_cmd(tiny), env)  # long timeout: the first start compiles moto into the cache
    run(deploy_cmd(tiny), env)
    run(deploy_cmd(tiny), env)
    run(down_cmd(tiny), env)
    live.remove(tiny)
    print(f"\nwarm-up (bytecode cache, 1-shard deploy): {time.perf_counter() - t0:.1f} s")


def bench_first(p: Params, rep: Report, tmp: Path, env: dict[str, str], live: list[Path]) -> Path:
    """First deploys on fresh projects and fresh clouds; returns the last one, still up."""
    cold: list[DeployRun] = []
    warm: list[DeployRun] = []
    ups: list[Run] = []
    downs: list[float] = []
    kept: Path | None = None

    def cold_run(i: int) -> None:
        # the deploy finds no local cloud and starts it
        project = new_project(tmp, f"cold-{i}")
        live.append(project)
        cold.append(first_deploy(project, env, cloud_up=False))
        downs.append(run(down_cmd(project), env).wall_s)
        live.remove(project)

    def up_run(i: int) -> None:
        # `shardkit local up` first (timed on its own), then the deploy
        nonlocal kept
        if kept is not None:  # the previous one's cloud goes down first
            downs.append(run(down_cmd(kept), env).wall_s)
            live.remove(kept)
        project = new_project(tmp, f"up-{i}")
        live.append(project)
        ups.append(run(up_cmd(project), env))
        warm.append(first_deploy(project, env, cloud_up=True))
        kept = project  # the last one stays up: the no-op redeploys run against it

    for i in range(p.first_runs):
        order = (cold_run, up_run) if i % 2 == 0 else (up_run, cold_run)
        for variant in order:
            variant(i)
        print(
            f"  first deploy run {i + 1}/{p.first_runs} "
            f"({'cold first' if i % 2 == 0 else 'cloud-up first'}): cold {cold[-1].wall_s:.1f} s,"
            f" cloud up {warm[-1].wall_s:.1f} s (+ local up {ups[-1].wall_s:.1f} s)"
        )
        sys.stdout.flush()
    assert kept is not None

    def cpu(values: Sequence[float | None]) -> str:
        known = [v for v in values if v is not None]
        return f"{med(known):.1f}" if known else "?"

    def row(label: str, runs: Sequence[DeployRun]) -> list[str]:
        walls = [r.wall_s for r in runs]
        return [
            label,
            str(len(runs)),
            f"{med(walls):.2f}",
            f"{min(walls):.2f}",
            f"{max(walls):.2f}",
            cpu([r.client_cpu_s for r in runs]),
            cpu([r.server_cpu_s for r in runs]),
            f"{runs[-1].steps:,}",
            f"{runs[-1].mutating:,}",
        ]

    up_walls = [u.wall_s for u in ups]
    sums = [w.wall_s + u for w, u in zip(warm, up_walls, strict=True)]
    rows = [
        row("first deploy, local cloud already up", warm),
        row("first deploy, cold (the deploy starts the local cloud)", cold),
        [
            "`shardkit local up` alone (fresh project)",
            str(len(ups)),
            f"{med(up_walls):.2f}",
            f"{min(up_walls):.2f}",
            f"{max(up_walls):.2f}",
            cpu([u.cpu_s for u in ups]),
            "",
            "",
            "",
        ],
        [
            "local up + first deploy (sum, per run)",
            str(len(sums)),
            f"{med(sums):.2f}",
            f"{min(sums):.2f}",
            f"{max(sums):.2f}",
            "",
            "",
            "",
            "",
        ],
        [
            "`shardkit local down` after a first deploy",
            str(len(downs)),
            f"{med(downs):.2f}",
            f"{min(downs):.2f}",
            f"{max(downs):.2f}",
            "",
            "",
            "",
            "",
        ],
    ]
    print_table(
        f"1. First deploy of {SHARDS} shards ({SHARDS // len(REGIONS)} per region x "
        f"{len(REGIONS)} regions), wall clock of the whole command, seconds",
        [
            "case",
            "runs",
            "median s",
            "min s",
            "max s",
            "client CPU s",
            "server CPU s",
            "steps",
            "mutating calls",
        ],
        rows,
        notes=[
            "every run: a fresh project directory (new signing key, empty state) and a fresh "
            "local cloud; `shardkit local down` after it (not timed in the deploy rows); the "
            "two variants alternate which goes first in each round (the cloud-up project's "
            "cloud, idle, stays up until the next cloud-up run; the last one serves section 2)",
            "cloud already up: `shardkit local up` ran just before and is NOT included; cold: "
            "the local cloud start IS included (the deploy starts it)",
            "client CPU: user+sys of the `shardkit deploy` process; server CPU: user+sys of "
            "the local cloud process (moto + gateway) during the deploy (cold: since its "
            "start); the rest of the wall time is waiting",
            "steps / mutating calls: from the --json output (steps_done, mutating_calls)",
        ],
    )
    rep.target(
        "first deploy, local cloud already up (median)",
        med([r.wall_s for r in warm]),
        20,
        ".2f",
        "s",
    )
    rep.target(
        "first deploy, cold: includes the local cloud start (median)",
        med([r.wall_s for r in cold]),
        20,
        ".2f",
        "s",
    )
    placeholder = tmp / "<project>"
    rep.command(
        "first deploy (both variants)",
        shown(deploy_cmd(placeholder), "PYTHONPYCACHEPREFIX=<run cache>"),
    )
    rep.command("cloud already up: before the deploy, not timed", shown(up_cmd(placeholder)))
    rep.command("between runs", shown(down_cmd(placeholder)))
    return kept


# -- 2. no-op redeploy and floors -----------------------------------------------------------------


def bench_noop(p: Params, rep: Report, project: Path, env: dict[str, str], cache: Path) -> float:
    endpoint = json.loads((project / ".shardkit" / "local" / "cloud.json").read_text())["endpoint"]
    boto3_call = (
        "import boto3; boto3.client('sts', region_name='us-east-1', "
        f"endpoint_url='{endpoint}', aws_access_key_id='testing', "
        "aws_secret_access_key='testing').get_caller_identity()"
    )
    inherited = dict(os.environ)
    inherited_note = caller_bytecode() or "as inherited"
    noop = "no-op redeploy: shardkit deploy DIR --local --yes --json"
    cases: list[tuple[str, str, list[str], dict[str, str]]] = [
        (noop, "cached", deploy_cmd(project), env),
        ("shardkit --help", "cached", [SHARDKIT, "--help"], env),
        (
            "python -c 'import shardkit.cli.main'",
            "cached",
            [PY, "-c", "import shardkit.cli.main"],
            env,
        ),
        ("python -c 'import boto3'", "cached", [PY, "-c", "import boto3"], env),
        (
            "python -c: import boto3 + STS client + 1 call to the cloud",
            "cached",
            [PY, "-c", boto3_call],
            env,
        ),
        ("python -c pass", "cached", [PY, "-c", "pass"], env),
        (noop + " (caller's env)", inherited_note, deploy_cmd(project), inherited),
        ("shardkit --help (caller's env)", inherited_note, [SHARDKIT, "--help"], inherited),
    ]
    outputs: list[dict[str, Any]] = []
    samples: dict[str, list[Run]] = {c[0]: [] for c in cases}
    for _, _, cmd, e in cases:
        run(cmd, e)  # warm-up
    for _ in range(p.noop_runs):
        for label, _, cmd, e in cases:
            r = run(cmd, e)
            samples[label].append(r)
            if cmd[1] == "deploy":
                outputs.append(json.loads(r.out))
    noop_med = med([r.wall_s for r in samples[noop]])
    rows = []
    for label, note, _, _ in cases:
        walls = [r.wall_s * 1000 for r in samples[label]]
        rows.append(
            [
                label,
                note,
                str(len(walls)),
                f"{med(walls):,.0f}",
                f"{min(walls):,.0f}",
                f"{max(walls):,.0f}",
                f"{med([r.cpu_s * 1000 for r in samples[label]]):,.0f}",
                f"{noop_med * 1000 / med(walls):.2f}x",
            ]
        )
    print_table(
        f"2. No-op redeploy vs. floors, wall clock ms ({p.noop_runs} runs each, round-robin)",
        ["case", "bytecode", "runs", "median ms", "min ms", "max ms", "CPU ms", "no-op/this"],
        rows,
        notes=[
            "the no-op redeploys run against the last first-deploy project of section 1, its "
            "local cloud up and its deployment current",
            "bytecode 'cached': this run's PYTHONPYCACHEPREFIX cache, warm; caller's env: the "
            "environment this script was started with (with PYTHONDONTWRITEBYTECODE=1 and no "
            "__pycache__ in the checkout, shardkit's own modules are compiled on every run)",
            "CPU ms: user+sys of the command's process; no-op/this: the no-op's median divided "
            "by this row's (how many times this floor fits into a no-op)",
        ],
    )
    changed = [o["changed"] for o in outputs]
    mutating = [int(o["mutating_calls"]) for o in outputs]
    steps = [len(o["plan"]["steps"]) for o in outputs]
    print(
        f"\nno-op --json output, per run: changed = {json.dumps(changed)}; mutating_calls = "
        f"{mutating}; plan steps = {steps}; plan summary = {outputs[-1]['plan']['summary']!r}"
    )
    assert not any(changed), "a no-op redeploy changed something"
    assert not any(mutating), "a no-op redeploy made mutating calls"
    rep.target("no-op redeploy (median, cached bytecode)", noop_med, 1.5, ".2f", "s")
    rep.target("no-op redeploy: mutating calls (max over runs)", max(mutating), 0, "d", "")
    rep.target("no-op redeploy: runs with changed = true", sum(changed), 0, "d", "")
    rep.command(
        "no-op redeploy",
        shown(deploy_cmd(project.parent / "<project>"), f"PYTHONPYCACHEPREFIX={cache}"),
    )
    rep.command("floor", shown([SHARDKIT, "--help"]))
    rep.command("floor", shown([PY, "-c", "import boto3"]))
    return noop_med


# -- 3. importtime --------------------------------------------------------------------------------


def importtime_tables(
    title: str,
    runs: list[list[Imp]],
    floor: list[list[Imp]],
    scale_ms: float,
    scale_label: str,
    top: int,
) -> None:
    """Top imports by cumulative time (median over runs), modules of the floor left out."""
    st = import_stats(runs, floor)
    print_table(
        f"{title}: top {top} imports by cumulative time (median of {len(runs)} runs)",
        [
            "module (indent = import depth)",
            "imported by",
            "self ms",
            "cumulative ms",
            f"% of {scale_label}",
        ],
        top_import_rows(st, top, scale_ms),
        notes=[
            f"{len(st.mine):,} modules imported beyond "
            f"the interpreter's own start-up; their self times add up to {st.total:,.0f} ms "
            f"(start-up imports of `python -c pass`, left out here: {st.floor_total:,.0f} ms)",
            "cumulative includes everything a module imports; nested rows are contained in "
            "the rows above them, so the column does not add up",
        ],
    )
    print_table(
        f"{title}: self time by top-level package (top 10)",
        ["package", "modules", "self ms", "share"],
        package_rows(st),
    )


def bench_importtime(
    p: Params, rep: Report, project: Path, env: dict[str, str], noop_med: float
) -> None:
    script = "import sys; from shardkit.cli.main import main; main(sys.argv[1:])"
    cmd = [PY, "-X", "importtime", "-c", script, *deploy_cmd(project)[1:]]
    floor_cmd = [PY, "-X", "importtime", "-c", "pass"]
    runs, floor = [], []
    for _ in range(p.importtime_runs):
        r = run(cmd, env)
        assert json.loads(r.out)["changed"] is False
        runs.append(parse_importtime(r.err))
        floor.append(parse_importtime(run(floor_cmd, env).err))
    importtime_tables(
        "3. Where the no-op's time goes: -X importtime of the command",
        runs,
        floor,
        noop_med * 1000,
        "no-op median",
        15,
    )
    rep.command(
        "importtime", shown([*cmd[:5], "deploy", "<project>", "--local", "--yes", "--json"])
    )


# -- 4. cProfile ----------------------------------------------------------------------------------

# (label, file suffix, function): the phases of a no-op deploy, as cumulative times.
PHASES = [
    ("import shardkit.cli.main (every command module)", "shardkit/cli/main.py", "<module>"),
    ("load_project: read + validate shardkit.toml", "shardkit/config/loader.py", "load_project"),
    (
        "  of which aws_regions(): botocore endpoint data",
        "shardkit/config/models.py",
        "aws_regions",
    ),
    ("open_target: local cloud status + STS identify", "shardkit/deploy/targets.py", "open_target"),
    ("  of which server.status (record, /proc, probe)", "shardkit/local/server.py", "status"),
    ("  of which server.client (boto3 client creation)", "shardkit/local/server.py", "client"),
    ("  of which identify (sts:GetCallerIdentity)", "shardkit/deploy/targets.py", "identify"),
    ("Deployer.needs_restore (manifest)", "shardkit/deploy/engine.py", "needs_restore"),
    ("Deployer.plan", "shardkit/deploy/engine.py", "plan"),
    ("  deployed_map: read + verify the deployed map", "shardkit/deploy/engine.py", "deployed_map"),
    ("  _next_map: build_map + same_routing", "shardkit/deploy/engine.py", "_next_map"),
    ("  build_package: zip + sha256 of the code", "shardkit/deploy/package.py", "build_package"),
    ("  _blueprint: expand the blueprint", "shardkit/deploy/engine.py", "_blueprint"),
    ("  make_plan: diff against the manifest", "shardkit/deploy/plan.py", "make_plan"),
    ("_nothing_to_do: outputs + JSON", "shardkit/cli/deploy.py", "_nothing_to_do"),
]
_NOISE = (
    "<frozen importlib",
    "{built-in method builtins.exec}",
    "{built-in method builtins.__import__}",
    "click/core.py",
    "{method 'validate_python'",
    "importlib/__init__.py",
)


def short(path: str) -> str:
    stdlib = str(
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    for prefix in (str(REPO) + "/", str(Path(PY).parents[1]) + "/", stdlib + "/"):
        path = path.replace(prefix, "")
    return re.sub(r"^lib/python3\.\d+/site-packages/", "", path)


def bench_profile(
    rep: Report, tmp: Path, project: Path, env: dict[str, str], noop_med: float
) -> None:
    out = tmp / "noop.prof"
    argv = deploy_cmd(project)[1:]
    r = run([PY, "-c", PROFILE_SCRIPT, str(out), *argv], env)
    wall_ms = float(r.out.strip().splitlines()[-1]) * 1000
    stats = pstats.Stats(str(out))
    entries = stats.stats  # type: ignore[attr-defined]
    total_ms = max(ct for (_, _, _, ct, _) in entries.values()) * 1000

    def label(key: tuple[str, int, str]) -> str:
        file, line, fn = key
        return f"{short(file)}:{line}({fn})" if line else fn

    ranked = sorted(entries.items(), key=lambda kv: -kv[1][3])
    rows = []
    for key, (_, nc, tt, ct, _) in ranked:
        text = label(key)
        if any(n in text for n in _NOISE):
            continue
        rows.append(
            [
                text,
                f"{nc:,}",
                f"{tt * 1000:,.1f}",
                f"{ct * 1000:,.1f}",
                f"{100 * ct * 1000 / wall_ms:.0f}%",
            ]
        )
        if len(rows) == 15:
            break
    print_table(
        "4. cProfile of the no-op deploy (in-process main(), fresh interpreter): top 15 by "
        "cumulative time",
        ["function", "calls", "tottime ms", "cumtime ms", "% of run"],
        rows,
        notes=[
            f"profiled run: {wall_ms:,.0f} ms from before `import shardkit.cli.main` to the "
            f"end of main() (profiler overhead included; unprofiled no-op median: "
            f"{noop_med * 1000:,.0f} ms incl. interpreter start-up)",
            "left out as pure plumbing: importlib bootstrap frames, exec/__import__, click's "
            "dispatch and pydantic's validate_python wrapper (their time is in the rows they "
            "call)",
        ],
    )
    phase_rows = []
    for text, suffix, fn in PHASES:
        hits = [
            (v[1], v[3])
            for (file, _, name), v in entries.items()
            if file.endswith(suffix) and name == fn
        ]
        if not hits:
            phase_rows.append([text, "-", "-", "-"])
            continue
        calls = sum(h[0] for h in hits)
        ct = max(h[1] for h in hits) * 1000
        phase_rows.append([text, f"{calls:,}", f"{ct:,.1f}", f"{100 * ct / wall_ms:.0f}%"])
    print_table(
        "4b. The no-op deploy by phase (cumulative ms in the same profile)",
        ["phase", "calls", "cumulative ms", "% of run"],
        phase_rows,
        notes=[
            "indented rows are part of the row above them; import time of modules first "
            "imported inside a phase counts in that phase",
            f"total profiled time {total_ms:,.0f} ms",
        ],
    )
    rep.command(
        "cProfile",
        shown(
            [
                PY,
                "-c",
                "<PROFILE_SCRIPT in bench_deploy.py>",
                "OUT.prof",
                "deploy",
                "<project>",
                "--local",
                "--yes",
                "--json",
            ]
        ),
    )


# -- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, argv, "1 first deploy per variant, 5 no-op runs (~1.5 min)")
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="shardkit-bench-deploy-"))
    cache = tmp / "pycache"
    env = bench_env(cache)
    header(p, cache)
    rep = Report()
    live: list[Path] = []  # projects whose local cloud may be up: always brought down
    try:
        warm_up(p, rep, tmp, env, live)
        project = bench_first(p, rep, tmp, env, live)
        noop_med = bench_noop(p, rep, project, env, cache)
        bench_importtime(p, rep, project, env, noop_med)
        bench_profile(rep, tmp, project, env, noop_med)
    finally:
        for project in live:
            subprocess.run(
                down_cmd(project), env=env, capture_output=True, check=False, timeout=120
            )
        shutil.rmtree(tmp, ignore_errors=True)

    rep.finish(
        t_start,
        "Commands (paths are this run's temp dirs; <project> is a fresh project directory):",
        load_at_end=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
