"""``shardkit plan | apply | deploy | status | destroy | rollback``."""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from .._files import write_bytes_atomic
from ..config import load_project
from ..config.loader import Project
from ..deploy.engine import Deployer, nothing_deployed
from ..deploy.executor import ApplyResult
from ..deploy.plan import Plan, Step
from ..deploy.state import cached_record
from ..deploy.targets import open_target, target_name
from ..errors import DeployError, LocalCloudError
from .migration import event_printer, has_migration, show_status, show_summary
from .output import console, emit_json, err_console, json_option
from .progress import Phases

_PATH = click.Path(path_type=Path)
_STEP_LIST_LIMIT = 40
F = TypeVar("F", bound=Callable[..., Any])


def local_option(what: str) -> Callable[[F], F]:
    """``--local/--aws``; ``what`` says what the command does there ("Deploy to")."""
    return click.option(
        "--local/--aws",
        "local",
        default=None,
        help=f"{what} the local cloud (moto on 127.0.0.1) or AWS [default: project.target].",
    )


yes_option = click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
project_arg = click.argument("project_dir", type=_PATH, default=".")


lock_timeout_option = click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for another command's deployment lock instead of failing at once.",
)


def _deployer(
    project_dir: Path,
    local: bool | None,
    *,
    start: bool,
    phases: Phases,
    lock_timeout: float = 0.0,
) -> Deployer:
    project = load_project(project_dir)
    on_local = target_name(project, local) == "local"
    where = "the local cloud" + " (starting it if needed)" * start if on_local else "AWS"
    with phases.phase(f"connecting to {where}"):
        target = open_target(project, local=local, start=start)
    return Deployer(
        project,
        target,
        vendor=_vendor(project, target.name),
        notify=_notify(phases.json),
        lock_timeout=lock_timeout,
        events=event_printer(phases.json),
    )


def _notify(json_: bool) -> Callable[[str], None]:
    """Messages of the engine (a restore, a wait for the lock): on stderr, never in JSON."""
    return lambda message: None if json_ else err_console.print(message, soft_wrap=True)


def _planned(deployer: Deployer, phases: Phases, make: Callable[[], Plan]) -> Plan:
    """A plan, made while the phase says so: the map, the code package and the deployed state
    are read and compared, which takes a while."""
    with phases.phase("planning (map, code package, what is deployed)"):
        return make()


def _vendor(project: Project, target: str) -> bool:
    """Real AWS needs the dependency wheels in the code package (unless a layer has them)."""
    return target == "aws" and project.config.proxy.vendor


def restore_local(project_dir: Path, json_: bool) -> ApplyResult | None:
    """After the local cloud (re)starts: re-create the recorded deployment, if there is one."""
    project = load_project(project_dir)
    return Deployer(project, open_target(project, local=True), notify=_notify(json_)).restore()


refresh_option = click.option(
    "--refresh",
    is_flag=True,
    help="First check (read-only) that recorded resources still exist; re-create missing ones.",
)


@click.command("plan")
@project_arg
@click.option("--out", type=_PATH, help="Save the plan as JSON, to review and `shardkit apply`.")
@local_option("Plan for")
@refresh_option
@json_option
def plan_cmd(
    project_dir: Path, out: Path | None, local: bool | None, refresh: bool, json_: bool
) -> None:
    """Show what a deploy would change, without changing anything."""
    phases = Phases("plan", json_=json_)
    deployer = _deployer(project_dir, local, start=True, phases=phases)
    plan = _planned(deployer, phases, lambda: deployer.plan(refresh=refresh))
    if out:
        write_bytes_atomic(out, plan.to_json().encode())
    migration = deployer.migration_summary(plan) if has_migration(plan) else []
    if json_:
        emit_json(
            {
                **_plan_dict(plan, out),
                "mutating_calls": deployer.target.aws.mutating_calls,
                "migration": migration,
            }
        )
        return
    if plan.restores:
        console.print("the local cloud restarted: this plan restores the recorded deployment")
    _show_plan(plan)
    show_summary(migration, False)
    if out:
        console.print(
            f"saved plan [bold]{plan.plan_id}[/] to {out}; apply it with `shardkit apply {out}`"
        )


@click.command("apply")
@click.argument("plan_file", type=_PATH)
@lock_timeout_option
@json_option
def apply_cmd(plan_file: Path, lock_timeout: float, json_: bool) -> None:
    """Apply a saved plan. Refused if the deployed state changed since it was made."""
    plan = Plan.load(plan_file)
    phases = Phases("apply", json_=json_)
    deployer = _deployer(
        Path(plan.project_root),
        plan.target == "local",
        start=False,
        phases=phases,
        lock_timeout=lock_timeout,
    )
    result = _apply(deployer, plan, phases)
    _report(deployer, plan, result, json_)


@click.command("deploy")
@project_arg
@local_option("Deploy to")
@refresh_option
@yes_option
@lock_timeout_option
@json_option
def deploy_cmd(
    project_dir: Path,
    local: bool | None,
    refresh: bool,
    yes: bool,
    lock_timeout: float,
    json_: bool,
) -> None:
    """Plan, show, and apply: the project as configured, in every region."""
    phases = Phases("deploy", json_=json_)
    deployer = _deployer(project_dir, local, start=True, phases=phases, lock_timeout=lock_timeout)

    def plan() -> Plan:
        return deployer.plan(refresh=refresh)

    # With --yes, a deploy that waited for the lock plans afresh from what it finds.
    _carry_out(
        deployer, _planned(deployer, phases, plan), yes, phases, replan=plan if yes else None
    )


@click.command("status")
@project_arg
@local_option("Show what is deployed on")
@json_option
def status_cmd(project_dir: Path, local: bool | None, json_: bool) -> None:
    """What is deployed: recorded state checked against what exists."""
    info = _status(project_dir, local, json_)
    if json_:
        emit_json(info)
        return
    console.print(
        f"project [bold]{info['project']}[/] on {info['target']} "
        f"(account {info['account'] or '-'}, home {info['home_region']}): deployment "
        f"{info['deployment']}, map version {info['map_version']}, status {info['status']}"
    )
    for problem in info["problems"]:
        console.print(f"  [red]problem[/] {problem}", soft_wrap=True)
    if info["lock"]:
        lock = info["lock"]
        console.print(
            f"[yellow]locked[/] by {lock['holder']} (pid {lock['pid']}, `{lock['command']}`), "
            f"lock id {lock['id']}"
        )
    console.print(
        f"{info['resources']} resources in {', '.join(info['regions']) or 'no region'}; "
        f"missing: {len(info['missing'])}; kept data tables: {len(info['retained'])}"
    )
    for key in info["missing"]:
        console.print(f"  [red]missing[/] {key}")
    if info["pending_applies"]:
        console.print(
            f"[yellow]unfinished apply: plan {', '.join(info['pending_applies'])}[/] "
            "(run the same apply or `shardkit deploy` to resume)"
        )
    show_status(info)
    _shard_table(info["shards"])
    if info["autoshard"]:
        from .autoshard import show_decisions

        show_decisions(info["autoshard"])


def _status(project_dir: Path, local: bool | None, json_: bool) -> dict[str, Any]:
    """The deployment's status; a local cloud that is not running with nothing ever deployed
    to it is "nothing deployed", not an error."""
    try:
        deployer = _deployer(project_dir, local, start=False, phases=Phases("status", json_=json_))
    except LocalCloudError:
        project = load_project(project_dir)
        if cached_record(project.state_dir, "local") is not None:
            raise
        return {**nothing_deployed(project, "local"), "autoshard": []}
    from ..autoshard.controller import DecisionLog

    info = deployer.status()
    info["autoshard"] = DecisionLog.of(deployer).entries()[-10:]
    return info


@click.command("destroy")
@project_arg
@click.option(
    "--delete-data",
    is_flag=True,
    help="Also delete the state tables and the home bucket with the deployment record.",
)
@local_option("Delete what is deployed on")
@yes_option
@lock_timeout_option
@json_option
def destroy_cmd(
    project_dir: Path,
    delete_data: bool,
    local: bool | None,
    yes: bool,
    lock_timeout: float,
    json_: bool,
) -> None:
    """Delete every deployed resource; the state tables and the home bucket (which keeps the
    deployment record) stay unless --delete-data."""
    phases = Phases("destroy", json_=json_)
    deployer = _deployer(project_dir, local, start=False, phases=phases, lock_timeout=lock_timeout)

    def plan() -> Plan:
        return deployer.plan_destroy(delete_data=delete_data)

    # With --yes, what was restored first (a restarted local cloud) is destroyed as it stands.
    _carry_out(
        deployer, _planned(deployer, phases, plan), yes, phases, replan=plan if yes else None
    )


@click.command("rollback")
@project_arg
@local_option("Roll back on")
@yes_option
@lock_timeout_option
@json_option
def rollback_cmd(
    project_dir: Path, local: bool | None, yes: bool, lock_timeout: float, json_: bool
) -> None:
    """Return to the previous successful deployment (its map is republished as a new version)."""
    phases = Phases("rollback", json_=json_)
    deployer = _deployer(project_dir, local, start=False, phases=phases, lock_timeout=lock_timeout)
    # With --yes, a rollback after a restore (a restarted local cloud) is planned from it.
    replan = deployer.plan_rollback if yes else None
    _carry_out(
        deployer, _planned(deployer, phases, deployer.plan_rollback), yes, phases, replan=replan
    )


@click.command("bootstrap")
@project_arg
@local_option("Create the foundation on")
@yes_option
@lock_timeout_option
@json_option
def bootstrap_cmd(
    project_dir: Path, local: bool | None, yes: bool, lock_timeout: float, json_: bool
) -> None:
    """Create only the per-region foundation: artifact/registry buckets and state tables."""
    phases = Phases("bootstrap", json_=json_)
    deployer = _deployer(project_dir, local, start=True, phases=phases, lock_timeout=lock_timeout)
    _carry_out(deployer, _planned(deployer, phases, deployer.plan_bootstrap), yes, phases)


@click.command("unlock")
@project_arg
@click.argument("lock_id")
@local_option("Break the lock on")
@json_option
def unlock_cmd(project_dir: Path, lock_id: str, local: bool | None, json_: bool) -> None:
    """Break the deployment lock LOCK_ID, left by a command that died (see `shardkit status`)."""
    deployer = _deployer(project_dir, local, start=False, phases=Phases("unlock", json_=json_))
    broken = deployer.unlock(lock_id)
    if json_:
        emit_json({"unlocked": vars(broken)})
        return
    console.print(
        f"broke lock {broken.id} held by {broken.holder} (pid {broken.pid}, `{broken.command}`)"
    )


@click.command("cleanup")
@project_arg
@click.option("--now", is_flag=True, help="Also delete copies whose rollback window is not over.")
@local_option("Clean up on")
@yes_option
@lock_timeout_option
@json_option
def cleanup_cmd(
    project_dir: Path, now: bool, local: bool | None, yes: bool, lock_timeout: float, json_: bool
) -> None:
    """Delete the source copies of slots moved across regions once their rollback window is over
    (`shardkit deploy` also does it when they are due)."""
    phases = Phases("cleanup", json_=json_)
    deployer = _deployer(project_dir, local, start=False, phases=phases, lock_timeout=lock_timeout)
    make = functools.partial(deployer.plan_cleanup, now=now)
    # With --yes, a cleanup after a restore (a restarted local cloud) is planned from it.
    _carry_out(
        deployer, _planned(deployer, phases, make), yes, phases, replan=make if yes else None
    )


COMMANDS = (
    plan_cmd,
    apply_cmd,
    deploy_cmd,
    status_cmd,
    destroy_cmd,
    rollback_cmd,
    bootstrap_cmd,
    unlock_cmd,
    cleanup_cmd,
)


# -- helpers ---------------------------------------------------------------------------------


def _carry_out(
    deployer: Deployer,
    plan: Plan,
    yes: bool,
    phases: Phases,
    replan: Callable[[], Plan] | None = None,
) -> None:
    """Show the plan, ask (unless --yes), apply, report; or say there is nothing to do."""
    json_ = phases.json
    if plan.is_noop and not plan.restores:
        _nothing_to_do(deployer, plan, json_)
        return
    if not json_:
        _show_plan(plan)
    if has_migration(plan):
        show_summary(deployer.migration_summary(plan), json_)
    _confirm(plan, yes, json_)
    result = _apply(deployer, plan, phases, replan)
    if result.steps_done == 0 and result.steps_skipped == 0:
        _nothing_to_do(deployer, plan, json_)
        return
    _report(deployer, plan, result, json_)


def _apply(
    deployer: Deployer, plan: Plan, phases: Phases, replan: Callable[[], Plan] | None = None
) -> ApplyResult:
    """Apply ``plan``, its steps counted as they complete (a bar on a terminal)."""
    with phases.counted(f"applying {plan.kind} {plan.plan_id}", len(plan.steps), "steps") as add:

        def progress(step: Step, event: str) -> None:
            if event in ("done", "skip"):
                add(1)

        deployer.progress = progress
        return deployer.apply(plan, replan=replan)


def _confirm(plan: Plan, yes: bool, json_: bool) -> None:
    if yes:
        return
    if json_ or not sys.stdin.isatty():
        raise DeployError(
            f"refusing to apply {len(plan.steps)} change(s) without confirmation",
            hint="pass --yes, or save the plan with `shardkit plan --out` and `shardkit apply` it",
        )
    if not click.confirm(f"apply {len(plan.steps)} change(s)?", default=False):
        raise click.Abort()


def _nothing_to_do(deployer: Deployer, plan: Plan, json_: bool) -> None:
    outputs = deployer.outputs()
    if json_:
        emit_json(
            {
                "changed": False,
                "mutating_calls": deployer.target.aws.mutating_calls,
                "plan": _plan_dict(plan, None),
                "outputs": outputs,
            }
        )
        return
    console.print(
        f"no changes: {deployer.target.name} is up to date "
        f"(deployment {outputs['deployment']}, map version {outputs['map_version']}); "
        f"{deployer.target.aws.mutating_calls} mutating AWS calls made"
    )


def _report(deployer: Deployer, plan: Plan, result: ApplyResult, json_: bool) -> None:
    outputs = result.record.outputs()
    path = deployer.outputs_path
    if json_:
        emit_json(
            {
                "changed": True,
                "plan_id": result.plan_id,
                "kind": result.kind,
                "steps_done": result.steps_done,
                "steps_resumed": result.steps_skipped,
                "mutating_calls": result.mutating_calls,
                "outputs_file": str(path),
                "outputs": outputs,
            }
        )
        return
    resumed = f" (resumed: {result.steps_skipped} already done)" if result.resumed else ""
    console.print(
        f"applied {result.kind} {result.plan_id}: {result.steps_done} steps{resumed}, "
        f"{result.mutating_calls} mutating AWS calls; deployment "
        f"{outputs['deployment']}, map version {outputs['map_version']}"
    )
    _shard_table(outputs["shards"])
    console.print(f"outputs written to {path}")


def _plan_dict(plan: Plan, out: Path | None) -> dict[str, Any]:
    return {
        "plan_id": plan.plan_id,
        "kind": plan.kind,
        "target": plan.target,
        "base": plan.base,
        "noop": plan.is_noop,
        "restores": plan.restores or None,
        "summary": plan.summary(),
        "map_version": plan.map_version if plan.map_envelope else None,
        "saved_to": str(out) if out else None,
        "steps": [{k: v for k, v in s.to_dict().items() if k != "props"} for s in plan.steps],
    }


def _show_plan(plan: Plan) -> None:
    if plan.is_noop:
        console.print("no changes")
        return
    counts = Counter((s.action, s.kind) for s in plan.steps)
    summary = ", ".join(f"{n} {a} {k}" for (a, k), n in sorted(counts.items()))
    console.print(f"plan {plan.plan_id} ({plan.kind}, {plan.target}): {summary}")
    if len(plan.steps) > _STEP_LIST_LIMIT:
        console.print(f"({len(plan.steps)} steps; `shardkit plan --json` lists them all)")
        return
    table = Table("#", "action", "kind", "region", "name", "why")
    for s in plan.steps:
        table.add_row(str(s.id), s.action, s.kind, s.region, s.name, s.reason)
    console.print(table)


def _shard_table(shards: dict[str, dict[str, Any]]) -> None:
    if not shards:
        return
    table = Table("shard", "region", "function", "version", "url")
    for shard, info in shards.items():
        table.add_row(
            shard,
            info.get("region", ""),
            info.get("function", ""),
            str(info.get("version", "")),
            info.get("url", ""),
        )
    console.print(table)
