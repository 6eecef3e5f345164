"""Remote deployment state on moto, in-process: the record in the home region's bucket, seen by
a second machine; the lock item (contention, a waiting command, a stale heartbeat, breaking it);
the calls the record adds to an apply; a home region that moves is refused.

A "second machine" is a fresh copy of the project directory - same configuration and keys,
no ``.shardkit/deploy`` - on the same (moto) account.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from shardkit.config import Project
from shardkit.deploy import executor, process
from shardkit.deploy.engine import Deployer, Target
from shardkit.deploy.lock import LOCK_PK, DeployLock
from shardkit.errors import DeployError, StateLockedError

if TYPE_CHECKING:
    from conftest import Call, Recorder

Deploy = Callable[[Project], Deployer]
MakeProject = Callable[..., Project]
Rewrite = Callable[[Project, Callable[[dict[str, Any]], None]], Project]
TABLE = "shardkit-quickstart-state"
HOME = "eu-west-1"  # the small project's first region
BUCKET = f"shardkit-quickstart-123456789012-{HOME}"


def second_machine(make_project: MakeProject, first: Project, name: str = "laptop") -> Project:
    """The same project checked out elsewhere: its config and keys, none of its deploy state."""
    other = make_project(dirname=name)
    (other.root / "shardkit.toml").write_text((first.root / "shardkit.toml").read_text())
    shutil.rmtree(other.keys_dir, ignore_errors=True)
    shutil.copytree(first.keys_dir, other.keys_dir)
    return _reload(other)


def _reload(project: Project) -> Project:
    from shardkit.config import load_project

    return load_project(project.root)


def state_calls(calls: list[Call]) -> Counter[str]:
    """The mutating calls an apply made on the record and its lock, by operation."""
    out: Counter[str] = Counter()
    for c in calls:
        if not c.mutating:
            continue
        key = c.params.get("Item") or c.params.get("Key") or {}
        if c.service == "s3" and str(c.params.get("Key", "")).startswith("shardkit-state/"):
            out[f"s3:{c.operation}:{c.params['Key'].split('/')[1]}"] += 1
        elif c.service == "dynamodb" and key.get("pk", {}).get("S") == LOCK_PK:
            out[f"dynamodb:{c.operation}"] += 1
    return out


def make_table(region: str = HOME) -> None:
    boto3.client("dynamodb", region_name=region).create_table(
        TableName=TABLE,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the record, remotely ------------------------------------------------------------------------


def test_a_second_machine_sees_the_deployment_plans_nothing_and_can_roll_back(
    make_project: MakeProject, rewrite: Rewrite, deployer: Deploy, recorder: Recorder
) -> None:
    ci = make_project(dirname="ci")
    first = deployer(ci)
    first.apply(first.plan())
    laptop = deployer(second_machine(make_project, ci))  # a checkout of this version
    first = deployer(rewrite(ci, lambda data: data["groups"]["eu"].update(memory_mb=1024)))
    first.apply(first.plan())

    assert not laptop.state.cache.record_path.exists()
    record = laptop.record()
    assert record.fingerprint() == first.record().fingerprint()
    assert (record.deployment, record.status, record.home_region) == (2, "ok", HOME)
    status = laptop.status()
    assert (status["deployment"], status["missing"], status["history"]) == (2, [], [1, 2])

    mark = recorder.mark()
    plan = laptop.plan()  # the laptop's config is the CI's first one: memory 512 again
    assert {s.action for s in plan.steps} >= {"update"} and plan.base == record.fingerprint()
    assert recorder.mutating_since(mark) == []  # plan and status only read

    back = laptop.apply(laptop.plan_rollback())
    assert back.record.deployment == 3
    assert deployer(ci).record().deployment == 3  # the CI machine sees the rollback
    same = deployer(_reload(rewrite(ci, lambda data: None)))
    assert same.record().fingerprint() == back.record.fingerprint()


def test_a_noop_from_a_second_machine_makes_no_mutating_call(
    make_project: MakeProject, deployer: Deploy, recorder: Recorder
) -> None:
    ci = make_project(dirname="ci")
    d = deployer(ci)
    d.apply(d.plan())
    laptop = deployer(second_machine(make_project, ci))
    mark = recorder.mark()
    plan = laptop.plan()
    assert plan.is_noop
    result = laptop.apply(plan)
    assert result.mutating_calls == 0 and recorder.mutating_since(mark) == []
    assert laptop.lock_holder() is None


def test_the_record_adds_a_few_calls_per_apply(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Deploy,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cost of remote state, exactly: lock, history entry, record, unlock - and a journal
    checkpoint every 20 steps. Besides, the lock's heartbeat (an ``update_item`` every 30 s)
    and the time-based checkpoint (every 15 s) depend on how long the apply takes: those are
    left out here (the heartbeat off, the checkpoint by steps only)."""
    monkeypatch.setattr(executor, "CHECKPOINT_S", float("inf"))
    monkeypatch.setattr(DeployLock, "_heartbeat", lambda self, lease, stop: None)
    project = make_project("quickstart")
    d = deployer(project)
    plan = d.plan()
    mark = recorder.mark()
    d.apply(plan)
    first = state_calls(recorder.since(mark))
    checkpoints = len(plan.steps) // 20
    assert first == {
        "dynamodb:put_item": 1,
        "dynamodb:delete_item": 1,
        "s3:put_object:deployments": 1,
        "s3:put_object:record.json": 2,  # and once before the map goes out
        "s3:put_object:journal": checkpoints,
        "s3:delete_object:journal": 1,
    }

    d = deployer(rewrite(project, lambda data: data["groups"]["eu"].update(memory_mb=1024)))
    plan = d.plan()
    mark = recorder.mark()
    d.apply(plan)
    assert len(plan.steps) < 20
    assert state_calls(recorder.since(mark)) == {
        "dynamodb:put_item": 1,
        "dynamodb:delete_item": 1,
        "s3:put_object:deployments": 1,
        "s3:put_object:record.json": 1,
    }


def test_a_moved_home_region_is_refused(
    make_project: MakeProject, rewrite: Rewrite, deployer: Deploy
) -> None:
    project = make_project()
    d = deployer(project)
    d.apply(d.plan())
    moved = rewrite(project, lambda data: data["project"].update(home_region="us-east-1"))
    with pytest.raises(DeployError) as here:
        deployer(moved).plan()
    assert "lives in home region eu-west-1" in here.value.message
    assert 'home_region = "eu-west-1"' in here.value.hint

    elsewhere = second_machine(make_project, moved)  # no cache: found by looking around
    with pytest.raises(DeployError) as there:
        deployer(elsewhere).plan()
    assert f"s3://{BUCKET}/shardkit-state/record.json" in there.value.message


def test_a_home_region_without_shards_is_a_config_error(
    make_project: MakeProject, small_config: dict[str, Any]
) -> None:
    from shardkit.errors import ConfigError

    small_config["regions"]["eu-central-1"] = {"jurisdiction": "eu"}
    small_config["project"]["home_region"] = "eu-central-1"
    with pytest.raises(ConfigError, match=r"project\.home_region = 'eu-central-1'"):
        make_project(small_config)


def test_a_failed_apply_resumes_from_the_remote_checkpoint_and_record(
    make_project: MakeProject, deployer: Deploy, recorder: Recorder
) -> None:
    from shardkit.errors import ApplyFailedError

    ci = make_project(dirname="ci")
    d = deployer(ci)
    plan = d.plan()
    recorder.fail("lambda", "create_function_url_config", "AccessDenied", times=None)
    with pytest.raises(ApplyFailedError):
        d.apply(plan)
    recorder.faults.clear()
    done = d.state.read_journal(plan.plan_id)

    # The machine loses its local state: the same plan resumes from the checkpoint.
    shutil.rmtree(d.state.cache.root)
    fresh = deployer(_reload(ci))
    assert fresh.record().status == "failed"
    assert fresh.status()["pending_applies"] == [plan.plan_id]
    assert fresh.state.read_journal(plan.plan_id) == done
    mark = recorder.mark()
    result = fresh.apply(plan)
    assert result.resumed and result.steps_skipped == len(done) > 0
    roles_done = {s.name for s in plan.steps if s.id in done and s.kind == "iam_role"}
    assert roles_done  # some roles were made before the failure: not made again
    again = {c.params["RoleName"] for c in recorder.since(mark) if c.operation == "create_role"}
    assert again.isdisjoint(roles_done)
    assert fresh.record().status == "ok" and fresh.status()["pending_applies"] == []


def test_another_machine_continues_a_failed_deploy_without_redoing_its_steps(
    make_project: MakeProject, deployer: Deploy, recorder: Recorder
) -> None:
    from shardkit.errors import ApplyFailedError

    ci = make_project(dirname="ci")
    d = deployer(ci)
    recorder.fail("lambda", "create_function_url_config", "AccessDenied", times=None)
    with pytest.raises(ApplyFailedError):
        d.apply(d.plan())
    recorder.faults.clear()
    failed = d.record()

    laptop = deployer(second_machine(make_project, ci))
    plan = laptop.plan()  # against the record the failure left
    assert plan.base == failed.fingerprint()
    assert {s.key for s in plan.steps}.isdisjoint(failed.resources)
    assert laptop.apply(plan).record.status == "ok"


# -- the lock ------------------------------------------------------------------------------------


def test_the_lock_is_taken_once_and_names_its_holder(moto: None, target: Target) -> None:
    make_table()
    clock = Clock()
    first = DeployLock(target.aws, HOME, TABLE, clock=clock)
    held = first.acquire("deploy ci/project")
    with pytest.raises(StateLockedError) as err:
        DeployLock(target.aws, HOME, TABLE, clock=clock).acquire("deploy laptop/project")
    message = err.value.message
    assert message.startswith("the deployment is locked: held by ")
    assert f"lock id {held.id}" in message and "`deploy ci/project`" in message
    assert "since 2027-01-15T08:00:00Z" in message and held.holder in message
    assert "shardkit unlock PROJECT_DIR LOCK_ID" in err.value.hint

    first.release(held.id)
    assert DeployLock(target.aws, HOME, TABLE).current() is None


def test_a_lock_whose_heartbeat_stopped_says_so(moto: None, target: Target) -> None:
    make_table()
    clock = Clock()
    held = DeployLock(target.aws, HOME, TABLE, clock=clock, ttl=60).acquire("deploy")
    clock.now += 200  # the holder died: nothing renewed it
    with pytest.raises(StateLockedError) as err:
        DeployLock(target.aws, HOME, TABLE, clock=clock).acquire("deploy")
    assert "its heartbeat stopped 140 s ago (the holder died?)" in err.value.message
    assert held.id in err.value.message


def test_the_heartbeat_renews_the_lock_while_held(moto: None, target: Target) -> None:
    make_table()
    lock = DeployLock(target.aws, HOME, TABLE, ttl=0.2)
    with lock.held("deploy") as lease:
        first = lease.info.expires
        renewed = threading.Event()
        for _ in range(200):  # bounded: the heartbeat runs every 0.05 s
            current = lock.current()
            if current is not None and current.expires > first:
                renewed.set()
                break
            renewed.wait(0.05)
        assert renewed.is_set()
        assert not lease.lost.is_set()
    assert lock.current() is None


def test_force_unlock_needs_the_right_id_and_a_broken_lease_knows(
    moto: None, target: Target
) -> None:
    make_table()
    lock = DeployLock(target.aws, HOME, TABLE, ttl=0.2)
    with lock.held("deploy") as lease:
        with pytest.raises(DeployError) as wrong:
            lock.force_unlock("0123456789ab")
        assert f"held under id {lease.info.id}, not 0123456789ab" in wrong.value.message
        assert lock.current() is not None

        broken = lock.force_unlock(lease.info.id)
        assert broken.id == lease.info.id and lock.current() is None
        assert lease.lost.wait(5)  # the next heartbeat finds the lock gone
    with pytest.raises(DeployError, match="not locked"):
        lock.force_unlock(lease.info.id)


def test_a_waiting_command_gets_the_lock_when_it_is_released(moto: None, target: Target) -> None:
    make_table()
    clock = Clock()
    holder = DeployLock(target.aws, HOME, TABLE, clock=clock)
    held = holder.acquire("deploy ci")
    waited: list[str] = []

    def sleep(seconds: float) -> None:
        clock.now += seconds
        holder.release(held.id)  # the other command finishes while this one waits

    waiter = DeployLock(target.aws, HOME, TABLE, clock=clock, sleep=sleep)
    got = waiter.acquire("deploy laptop", timeout=30, on_wait=lambda h: waited.append(h.id))
    assert waited == [held.id] and got.command == "deploy laptop"

    never = DeployLock(
        target.aws, HOME, TABLE, clock=clock, sleep=lambda s: setattr(clock, "now", clock.now + s)
    )
    with pytest.raises(StateLockedError, match="after waiting 3 s"):
        never.acquire("deploy", timeout=3)


def unused_pid() -> int:
    """A pid no process has: above the kernel's largest."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1


def leave_lock(pid: int, machine: str, identity: str, lock_id: str = "deadbeef0001") -> None:
    """The lock item a process left when it stopped without releasing it."""
    boto3.client("dynamodb", region_name=HOME).put_item(
        TableName=TABLE,
        Item={
            "pk": {"S": LOCK_PK},
            "sk": {"S": "deploy"},
            "lock_id": {"S": lock_id},
            "holder": {"S": "dev@here"},
            "pid": {"N": str(pid)},
            "command": {"S": "deploy crashed"},
            "started": {"N": "1800000000"},
            "expires": {"N": "1800000120"},
            "machine": {"S": machine},
            "process": {"S": identity},
        },
    )


def test_a_lock_left_by_an_ended_process_of_this_machine_is_taken_over(
    moto: None, target: Target
) -> None:
    make_table()
    leave_lock(unused_pid(), process.machine(), "boot/1")
    told: list[str] = []
    lock = DeployLock(target.aws, HOME, TABLE)
    got = lock.acquire("deploy", on_take_over=lambda holder: told.append(holder.id))
    assert told == ["deadbeef0001"]
    assert lock.current().id == got.id
    assert (got.pid, got.machine) == (os.getpid(), process.machine())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process identity needs /proc")
def test_a_pid_given_to_another_process_does_not_keep_a_dead_holders_lock(
    moto: None, target: Target
) -> None:
    """The pid runs again (this very process), but started at another time: not the holder."""
    make_table()
    boot, _, start = process.identity().partition("/")
    leave_lock(os.getpid(), process.machine(), f"{boot}/{int(start) - 1}")
    told: list[str] = []
    DeployLock(target.aws, HOME, TABLE).acquire("deploy", on_take_over=lambda h: told.append(h.id))
    assert told == ["deadbeef0001"]


@pytest.mark.parametrize(
    "holder",
    [
        "running here",  # this process, as it is
        "ended elsewhere",  # another machine (or container): its pids are not ours to judge
        "written by an older shardkit",  # no machine recorded
    ],
)
def test_a_running_or_unknown_holder_keeps_its_lock(
    moto: None, target: Target, holder: str
) -> None:
    make_table()
    pid, machine, identity = {
        "running here": (os.getpid(), process.machine(), process.identity()),
        "ended elsewhere": (unused_pid(), "runner-7 pid:[4026531836]", "boot/1"),
        "written by an older shardkit": (unused_pid(), "", ""),
    }[holder]
    leave_lock(pid, machine, identity)
    told: list[str] = []
    with pytest.raises(StateLockedError, match="lock id deadbeef0001"):
        DeployLock(target.aws, HOME, TABLE).acquire(
            "deploy", on_take_over=lambda h: told.append(h.id)
        )
    assert told == []


def test_a_deploy_takes_over_the_lock_of_a_crashed_deploy_and_says_so(
    make_project: MakeProject, target: Target
) -> None:
    told: list[str] = []
    d = Deployer(make_project(), target, notify=told.append)
    d.apply(d.plan_bootstrap())
    leave_lock(unused_pid(), process.machine(), "boot/1")
    assert d.apply(d.plan()).record.status == "ok"
    (message,) = [m for m in told if m.startswith("took over")]
    assert message.startswith("took over the deployment lock held by dev@here (pid ")
    assert "lock id deadbeef0001" in message
    assert message.endswith("that process is no longer running")
    assert d.lock_holder() is None


def test_an_apply_while_locked_fails_at_once_and_changes_nothing(
    make_project: MakeProject, deployer: Deploy, recorder: Recorder
) -> None:
    project = make_project()
    d = deployer(project)
    d.apply(d.plan_bootstrap())
    plan = d.plan()
    other = d.state.lock().acquire("deploy elsewhere")
    before = d.record()
    with pytest.raises(StateLockedError):
        d.apply(plan)
    assert d.record() == before and d.status()["lock"]["id"] == other.id
    d.unlock(other.id)
    assert d.apply(plan).record.status == "ok"


def test_a_lock_item_can_never_be_a_shards() -> None:
    from shardkit.config.models import SHARD_ID_PATTERN

    assert LOCK_PK.startswith("_") and SHARD_ID_PATTERN.startswith("^[a-z]")
