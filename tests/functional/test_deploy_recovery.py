"""Nothing lost, nothing misleading: deployments that faults, destroys and tampering must never
leave unroutable or unreachable, and a ``status`` that tells the truth about them.

On moto, in-process, through the public API (``Deployer``) and the CLI (its entry point). The local
cloud is played in-process by :class:`LocalCloud`: moto behind a target named ``local`` whose
``kill()`` makes every call fail to connect and whose ``restart()`` comes back, under a new
instance id, with nothing - what a ``kill -9`` of the real server followed by ``local down
--no-save`` does - or, with ``tables_kept``, with DynamoDB as it was (the real server journals
its tables and items: a ``kill -9`` alone). What was deployed is checked with plain boto3 calls
(:func:`truth`), never with shardkit's own records.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from moto.awslambda_simple.models import lambda_simple_backends
from moto.backends import get_backend

import shardkit
from shardkit.aws.facade import Aws, boto3_factory
from shardkit.cli.main import main
from shardkit.config import Project
from shardkit.deploy.engine import Deployer, Target
from shardkit.deploy.plan import Plan, Step
from shardkit.deploy.record import Record
from shardkit.deploy.state import RECORD_KEY
from shardkit.deploy.targets import identify
from shardkit.errors import ApplyFailedError, ShardkitError

if TYPE_CHECKING:
    from conftest import Recorder

MakeProject = Callable[..., Project]
Rewrite = Callable[[Project, Callable[[dict[str, Any]], None]], Project]
P = "shardkit-quickstart"
REGIONS = ("eu-west-1", "us-east-1")
#: What the local cloud loses when it is killed: all but DynamoDB (which it journals).
VOLATILE = ("lambda", "s3", "iam", "logs", "cloudwatch", "events")


# -- looking at what exists (plain boto3, not shardkit's records) ---------------------------------


def aws(service: str, region: str) -> Any:
    return boto3.client(service, region_name=region)


def bucket_of(project: Project, region: str) -> str:
    return f"shardkit-{project.config.project.name}-123456789012-{region}"


def registry_map(project: Project, region: str) -> shardkit.ShardMap | None:
    """The map the registry of ``region`` serves (verified), or None when it serves none."""
    try:
        body = aws("s3", region).get_object(
            Bucket=bucket_of(project, region), Key="registry/map.skm"
        )
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("NoSuchKey", "NoSuchBucket"), exc
        return None
    return shardkit.decode_map(
        body["Body"].read(), shardkit.load_trusted_keys(project.keys_dir), now=float("-inf")
    )


def live_functions(region: str) -> set[str]:
    """Functions of ``region`` with a ``live`` alias: what a client invokes."""
    lam = aws("lambda", region)
    names = set()
    for fn in lam.list_functions()["Functions"]:
        aliases = lam.list_aliases(FunctionName=fn["FunctionName"])["Aliases"]
        if any(a["Name"] == "live" for a in aliases):
            names.add(fn["FunctionName"])
    return names


def truth(project: Project) -> dict[str, Any]:
    """What a client can see: per region, the registry's map version and the shards it names
    that have no live function; and which shards have one."""
    regions = sorted(project.config.regions)
    live = {region: live_functions(region) for region in regions}
    maps: dict[str, int | None] = {}
    dangling: set[str] = set()
    for region in regions:
        shard_map = registry_map(project, region)
        maps[region] = shard_map.version if shard_map else None
        if shard_map is not None:
            dangling |= {s.id for s in shard_map.shards if f"{P}-{s.id}" not in live[s.region]}
    shards = sorted(n.removeprefix(f"{P}-") for names in live.values() for n in names)
    return {"maps": maps, "dangling": sorted(dangling), "shards": shards}


def configured_shards(project: Project) -> list[str]:
    return sorted(s.id for name, g in project.config.groups.items() for s in g.shard_list(name))


# -- the CLI, in-process ---------------------------------------------------------------------------


Run = Callable[..., Any]


@pytest.fixture
def sk(capsys: pytest.CaptureFixture[str]) -> Run:
    """``sk(*args, code=0, json_=True)``: ``shardkit ARGS [--json]`` in-process, as the console
    entry point runs it; its JSON output - or, when ``code`` is not 0, its error as one line."""

    def run(*args: str, code: int = 0, json_: bool = True) -> Any:
        try:
            main([*args, "--json"] if json_ else list(args))
            exit_code = 0
        except SystemExit as exc:
            exit_code = int(exc.code or 0)
        out = capsys.readouterr()
        assert exit_code == code, f"shardkit {' '.join(args)}: {out.out}{out.err}"
        if code and json_:  # under --json an error is one JSON object on stderr
            error = json.loads(out.err)
            return f"error: {error['error']} — {error['hint']}"
        if code:
            lines = out.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), out.err
            return lines[0]
        return json.loads(out.out) if json_ else out.out

    return run


def deploy(d: Deployer) -> None:
    d.apply(d.plan())


def assert_converged(
    sk: Run, project: Project, recorder: Recorder, *, destroyed: bool = False
) -> None:
    """The deployment is true and complete: every registry serves one map naming only live
    shards, ``status`` says so, and deploying again makes no mutating call."""
    seen = truth(project)
    assert seen["dangling"] == []
    if destroyed:
        assert seen["shards"] == []
        assert sk("status", str(project.root))["status"] == "destroyed"
        return
    assert seen["shards"] == configured_shards(project)
    versions = set(seen["maps"].values())
    assert len(versions) == 1 and None not in versions, seen["maps"]
    status = sk("status", str(project.root))
    assert (status["status"], status["missing"], status["pending_applies"]) == ("ok", [], [])
    mark = recorder.mark()
    noop = sk("deploy", str(project.root), "--yes")
    assert (noop["changed"], noop["mutating_calls"]) == (False, 0)
    assert recorder.mutating_since(mark) == []


# -- the local cloud, in-process -------------------------------------------------------------------


class LocalCloud:
    """A target named ``local`` on moto that can be killed and restarted like the real server."""

    def __init__(self, recorder: Recorder) -> None:
        # one botocore session for every command: each would load the service models again
        self.factory = recorder.wrap(boto3_factory(max_attempts=1))
        self.down = False
        self.starts = 1

    @property
    def instance(self) -> str:
        return f"instance-{self.starts}"

    def target(self) -> Target:
        """What ``open_target(project, local=True)`` gives a new command (a new process)."""

        def make(service: str, region: str) -> Any:
            client = self.factory(service, region)
            client.meta.events.register_first("before-send", self._gate)
            return client

        target = identify(Aws(make, target="local"), "local")
        target.instance = self.instance
        return target

    def _gate(self, request: Any, **_: Any) -> None:
        if self.down:
            raise EndpointConnectionError(endpoint_url=request.url)

    def kill(self) -> None:
        self.down = True

    def restart(self, *, tables_kept: bool = False) -> None:
        # per account: `BackendDict.reset` is a classmethod that resets every service
        for service in VOLATILE if tables_kept else (*VOLATILE, "dynamodb"):
            for backend in get_backend(service).values():  # type: ignore[attr-defined]
                backend.reset()
        # without Docker moto serves Lambda from its "simple" backend, not from `lambda`'s
        for backend in lambda_simple_backends.values():
            backend.reset()
        self.down = False
        self.starts += 1


@pytest.fixture
def cloud(moto: None, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> LocalCloud:
    """The in-process local cloud, which the CLI's commands open as their target."""
    local = LocalCloud(recorder)

    def open_target(project: Project, *, local: bool | None = None, start: bool = False) -> Target:
        return local_cloud.target()

    local_cloud = local
    monkeypatch.setattr("shardkit.cli.deploy.open_target", open_target)
    # moto runs no function: a migration's prepare step cannot warm the new shards here
    monkeypatch.setattr("shardkit.cli.deploy.Deployer", functools.partial(Deployer, warm=False))
    return local


@pytest.fixture
def project_on(make_project: MakeProject, small_config: dict[str, Any]) -> Project:
    """A small two-region project whose target is the (in-process) local cloud."""
    small_config["project"]["target"] = "local"
    return make_project(small_config)


# -- 1. deploy -> destroy -> deploy --------------------------------------------------------------


def test_a_deploy_after_a_destroy_publishes_the_map_again(
    sk: Run, cloud: LocalCloud, project_on: Project, recorder: Recorder
) -> None:
    root = str(project_on.root)
    sk("deploy", root, "--yes")
    sk("destroy", root, "--yes")
    assert truth(project_on)["dangling"] == []  # no registry names a deleted shard
    plan = sk("plan", root)
    assert {s["region"] for s in plan["steps"] if s["action"] == "publish"} == set(REGIONS)
    sk("deploy", root, "--yes")
    assert_converged(sk, project_on, recorder)


def test_a_registry_map_deleted_or_replaced_behind_shardkits_back_is_published_again(
    sk: Run, cloud: LocalCloud, project_on: Project, recorder: Recorder
) -> None:
    """The class: a plan that trusts its record of the published map instead of probing the
    registry. The registry is what clients read, so the plan reads it."""
    root = str(project_on.root)
    sk("deploy", root, "--yes")
    s3 = aws("s3", "us-east-1")
    s3.delete_object(Bucket=bucket_of(project_on, "us-east-1"), Key="registry/map.skm")
    status = sk("status", root)
    assert status["status"] != "ok"
    plan = sk("plan", root)
    assert [s["region"] for s in plan["steps"] if s["action"] == "publish"] == ["us-east-1"]
    sk("deploy", root, "--yes")
    assert_converged(sk, project_on, recorder)

    s3.put_object(Bucket=bucket_of(project_on, "eu-west-1"), Key="registry/map.skm", Body=b"junk")
    assert sk("status", root)["status"] != "ok"
    sk("deploy", root, "--yes")
    assert_converged(sk, project_on, recorder)


# -- 2 and 3. the local cloud killed mid-apply ------------------------------------------------------


def kill_at(cloud: LocalCloud, step_id: int) -> Callable[[Step, str], None]:
    """A progress callback that kills the local cloud as step ``step_id`` starts."""

    def progress(step: Step, event: str) -> None:
        if event == "start" and step.id == step_id:
            cloud.kill()

    return progress


def apply_killed(
    sk: Run,
    project: Project,
    cloud: LocalCloud,
    plan_of: Callable[[Deployer], Plan],
    at: Callable[[Plan], int],
) -> None:
    """Apply a plan and kill the local cloud as its step ``at(plan)`` starts; restart it."""
    d = Deployer(project, cloud.target(), warm=False)
    plan = plan_of(d)
    d.progress = kill_at(cloud, at(plan))
    with pytest.raises(ShardkitError):  # the step, or the lock's release, cannot connect
        d.apply(plan)
    cloud.restart()
    unlock_dead_holder(sk, project)


def unlock_dead_holder(sk: Run, project: Project) -> None:
    """The killed command could not release its lock (its cloud was gone): here the holder is
    this very process, still alive, so it is broken as a user would, by its id."""
    lock = sk("status", str(project.root))["lock"]
    if lock is not None:
        sk("unlock", str(project.root), lock["id"], json_=False)


def first_of(action: str, kind: str) -> Callable[[Plan], int]:
    return lambda plan: next(s.id for s in plan.steps if (s.action, s.kind) == (action, kind))


def test_the_local_cloud_killed_during_a_reshard_is_recovered_by_the_next_deploy(
    sk: Run, cloud: LocalCloud, project_on: Project, rewrite: Rewrite, recorder: Recorder
) -> None:
    sk("deploy", str(project_on.root), "--yes")
    bigger = rewrite(project_on, lambda c: c["groups"]["eu"].update(shards=3))
    apply_killed(sk, bigger, cloud, lambda d: d.plan(), first_of("publish", "map"))

    status = sk("status", str(bigger.root))  # not restored yet: says so
    assert status["status"] == "failed" and any("restarted" in p for p in status["problems"])
    sk("deploy", str(bigger.root), "--yes")
    assert_converged(sk, bigger, recorder)
    assert "eu-2" in truth(bigger)["shards"]


def test_the_local_cloud_killed_during_a_first_deploy_is_recovered_by_the_next_deploy(
    sk: Run, cloud: LocalCloud, project_on: Project, recorder: Recorder
) -> None:
    apply_killed(sk, project_on, cloud, lambda d: d.plan(), first_of("create", "lambda_alias"))
    assert Deployer(project_on, cloud.target()).restore() is None  # `local up`: nothing to redo
    sk("deploy", str(project_on.root), "--yes")
    assert_converged(sk, project_on, recorder)


# -- 6. status ------------------------------------------------------------------------------------


def test_status_never_says_ok_when_something_is_missing_or_unfinished(
    sk: Run, cloud: LocalCloud, project_on: Project, recorder: Recorder
) -> None:
    root = str(project_on.root)
    sk("deploy", root, "--yes")
    assert sk("status", root)["status"] == "ok"
    aws("lambda", "us-east-1").delete_function(FunctionName=f"{P}-us-1")
    status = sk("status", root)
    assert status["missing"] and status["status"] == "drifted"
    assert any("us-1" in p for p in status["problems"])
    sk("deploy", root, "--yes", "--refresh")
    assert_converged(sk, project_on, recorder)


def test_status_of_a_failed_apply_says_failed(
    sk: Run, cloud: LocalCloud, project_on: Project, recorder: Recorder
) -> None:
    root = str(project_on.root)
    recorder.fail("lambda", "create_alias", "AccessDenied", times=None)
    sk("deploy", root, "--yes", code=2)
    status = sk("status", root)
    assert status["status"] == "failed" and status["pending_applies"]
    recorder.faults.clear()
    sk("deploy", root, "--yes")
    assert_converged(sk, project_on, recorder)


def test_status_of_a_destroyed_project_says_destroyed(
    sk: Run, cloud: LocalCloud, project_on: Project, recorder: Recorder
) -> None:
    root = str(project_on.root)
    sk("deploy", root, "--yes")
    sk("destroy", root, "--yes")
    assert_converged(sk, project_on, recorder, destroyed=True)


def test_status_of_a_never_deployed_project_says_nothing_deployed(
    sk: Run, make_project: MakeProject, small_config: dict[str, Any]
) -> None:
    """No local cloud runs (none is faked here): status needs none to say nothing is there."""
    small_config["project"]["target"] = "local"
    project = make_project(small_config)
    status = sk("status", str(project.root))
    assert status["status"] == "nothing deployed" and status["resources"] == 0
    assert "nothing deployed" in sk("status", str(project.root), json_=False)


# -- 5. cross-region ordering ---------------------------------------------------------------------


def _shrink_us_grow_eu(config: dict[str, Any]) -> None:
    config["groups"]["eu"].update(shards=3)
    config["groups"]["us"].update(shards=1)


def test_no_registry_names_a_shard_before_it_exists_nor_after_it_is_gone(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Callable[[Project], Deployer],
    recorder: Recorder,
) -> None:
    """A reshard that adds eu-2 (in eu-west-1) and removes us-1 (in us-east-1): every region's
    map goes out only once eu-2 exists, and us-1 goes only once no registry names it. The
    eu-west-1 function creation is held until another region publishes (or a second passes),
    which is what a slow region does; the order must not depend on it."""
    published = threading.Event()
    armed = threading.Event()

    def slow_eu_create(request: Any, **_: Any) -> None:
        if armed.is_set() and "eu-west-1" in request.url:
            published.wait(1.0)

    def on_publish(request: Any, **_: Any) -> None:
        if armed.is_set() and "registry/map.skm" in request.url:
            published.set()

    recorder.http_hooks.append(("lambda", "before-send.lambda.CreateFunction", slow_eu_create))
    recorder.http_hooks.append(("s3", "before-send.s3.PutObject", on_publish))
    project = make_project()
    deploy(deployer(project))
    changed = rewrite(project, _shrink_us_grow_eu)
    d = deployer(changed)
    plan = d.plan()
    armed.set()
    mark = recorder.mark()
    d.apply(plan)

    calls = recorder.since(mark)
    publishes = [
        i
        for i, c in enumerate(calls)
        if c.operation == "put_object" and c.params.get("Key") == "registry/map.skm"
    ]
    creates = [
        i
        for i, c in enumerate(calls)
        if c.service == "lambda" and c.operation.startswith("create_")
    ]
    deletes = [
        i
        for i, c in enumerate(calls)
        if c.service == "lambda" and c.operation.startswith("delete_")
    ]
    assert len(publishes) == 2 and creates and deletes
    assert max(creates) < min(publishes), "a registry named eu-2 before it existed"
    assert max(publishes) < min(deletes), "us-1 was deleted while a registry still named it"
    assert truth(changed)["dangling"] == []


def test_a_failed_publish_deletes_nothing_a_registry_still_names(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Callable[[Project], Deployer],
    recorder: Recorder,
) -> None:
    project = make_project()
    deploy(deployer(project))
    changed = rewrite(project, _shrink_us_grow_eu)
    d = deployer(changed)
    plan = d.plan()
    recorder.fail(
        "s3",
        "put_object",
        "AccessDenied",
        when=lambda c: c.region == "eu-west-1" and c.params.get("Key") == "registry/map.skm",
    )
    with pytest.raises(ApplyFailedError):
        d.apply(plan)
    assert f"{P}-us-1" in live_functions("us-east-1")  # the eu registry still names it
    assert truth(changed)["dangling"] == []
    d.apply(d.plan())
    assert truth(changed)["dangling"] == [] and f"{P}-us-1" not in live_functions("us-east-1")


# -- 12. the handler ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "code", "expected"),
    [
        ("app.nomodule:infer", None, "No module named 'app.nomodule'"),
        (
            "app.model:nothere",
            "def infer(key, payload, state):\n    return payload, state\n",
            "has no attribute 'nothere'",
        ),
        ("app.model:infer", "import not_a_dependency\n", "No module named 'not_a_dependency'"),
        ("app.model:infer", "infer = 42\n", "not callable"),
    ],
)
def test_a_handler_the_package_cannot_import_is_refused_at_plan(
    sk: Run,
    cloud: LocalCloud,
    project_on: Project,
    rewrite: Rewrite,
    handler: str,
    code: str | None,
    expected: str,
) -> None:
    project = rewrite(project_on, lambda c: c.setdefault("proxy", {}).update(handler=handler))
    if code is not None:
        (project.root / "app" / "model.py").write_text(code)
    for args in (["plan"], ["deploy", "--yes"]):
        line = sk(args[0], str(project.root), *args[1:], code=2)
        assert handler in line and expected in line, line
    assert truth(project)["shards"] == []  # nothing deployed


# -- 4. the deployed map's record tampered with -------------------------------------------------


def tamper_deployed_map(project: Project, target: str = "local") -> None:
    """Flip the last byte (the signature's) of the signed map the deployment record keeps, in
    both its copies: this machine's cache and the home bucket's."""

    def tampered(body: bytes) -> bytes:
        record = Record.model_validate_json(body)
        envelope = bytearray(record.map_envelope or b"")
        envelope[-1] ^= 0xFF
        return record.model_copy(update={"map_envelope": bytes(envelope)}).to_json()

    cache = project.state_dir / "deploy" / target / "record.json"
    cache.write_bytes(tampered(cache.read_bytes()))
    home = project.config.home_region
    s3 = aws("s3", home)
    remote = s3.get_object(Bucket=bucket_of(project, home), Key=RECORD_KEY)["Body"].read()
    s3.put_object(Bucket=bucket_of(project, home), Key=RECORD_KEY, Body=tampered(remote))


def test_a_tampered_deployed_map_record_is_recovered_from_the_registry(
    sk: Run, cloud: LocalCloud, project_on: Project, recorder: Recorder
) -> None:
    root = str(project_on.root)
    sk("deploy", root, "--yes")
    tamper_deployed_map(project_on)
    status = sk("status", root)
    assert status["status"] == "drifted"
    assert any("deployed map" in p for p in status["problems"]), status["problems"]
    plan = sk("plan", root)  # the registries vouch for the recorded hash: that map stays
    assert plan["map_version"] == 1
    sk("deploy", root, "--yes")
    assert_converged(sk, project_on, recorder)
    assert set(truth(project_on)["maps"].values()) == {1}


def test_a_tampered_map_record_no_registry_vouches_for_is_replaced_by_a_higher_version(
    sk: Run, cloud: LocalCloud, project_on: Project, recorder: Recorder
) -> None:
    root = str(project_on.root)
    sk("deploy", root, "--yes")
    tamper_deployed_map(project_on)
    for region in REGIONS:
        aws("s3", region).put_object(
            Bucket=bucket_of(project_on, region), Key="registry/map.skm", Body=b"junk"
        )
    assert sk("status", root)["status"] == "drifted"
    sk("deploy", root, "--yes")
    assert_converged(sk, project_on, recorder)
    assert set(truth(project_on)["maps"].values()) == {2}  # versions only move forward


# -- the crash matrix ------------------------------------------------------------------------------


class Killed(BaseException):
    """The deploy process dies: nothing of it runs on (not an error it could handle)."""


#: (scenario, the kind of step at whose start the crash comes) - every kind each plan has.
#: (scenario, kind of step): a ``migrate`` step's kind is its phase (``migrate:cutover``).
MATRIX = [
    ("first deploy", "create"),
    ("first deploy", "upload"),
    ("first deploy", "fence"),
    ("first deploy", "publish"),
    ("reshard", "create"),
    ("reshard", "migrate:prepare"),
    ("reshard", "migrate:cutover"),
    ("reshard", "publish"),
    ("cross-region move", "migrate:copy"),
    ("cross-region move", "migrate:cutover"),
    ("cleanup", "migrate:cleanup"),
    ("rollback", "migrate:cutover"),
    ("rollback", "publish"),
    ("rollback", "delete"),
    ("destroy", "unpublish"),
    ("destroy", "delete"),
    ("destroy", "retain"),
]
COMMAND = {
    "first deploy": "deploy",
    "reshard": "deploy",
    "cross-region move": "deploy",
    "cleanup": "cleanup",
    "rollback": "rollback",
    "destroy": "destroy",
}


def _tiny(config: dict[str, Any]) -> None:
    """One region, one group of one shard, 256 slots: every kind of step, and little else."""
    config["project"]["target"] = "local"
    config["hashing"]["slot_bits"] = 8
    config["regions"] = {"us-east-1": {"jurisdiction": "us"}}
    config["residency"] = {"default": "us"}
    config["groups"] = {"us": {**config["groups"]["us"], "shards": 1}}


@pytest.fixture
def tiny(make_project: MakeProject, small_config: dict[str, Any]) -> Project:
    """A project of :func:`_tiny`'s shape, on the (in-process) local cloud."""
    _tiny(small_config)
    return make_project(small_config)


def _two_regions(config: dict[str, Any]) -> None:
    """The tiny project with a second us region, empty, and a second shard to move there."""
    config["regions"]["us-west-2"] = {"jurisdiction": "us"}
    east = [{"id": f"us-{i}", "region": "us-east-1"} for i in range(2)]
    config["groups"]["us"].update(regions=["us-east-1", "us-west-2"], shards=east)


def _due_at_once(config: dict[str, Any]) -> None:
    _two_regions(config)
    config["migration"] = {"rollback_window_h": 0}  # source copies are due once they moved


def _to_west(config: dict[str, Any]) -> None:
    config["groups"]["us"]["shards"][1]["region"] = "us-west-2"


def _kind(step: Step) -> str:
    return f"migrate:{step.props['phase']}" if step.action == "migrate" else step.action


CASES = [
    (scenario, action, crash)
    for scenario, action in MATRIX
    for crash in ("deploy process", "local cloud")
]


@pytest.mark.parametrize(("scenario", "action", "crash"), CASES)
def test_a_crash_at_any_kind_of_step_converges_on_the_next_run(
    sk: Run,
    cloud: LocalCloud,
    tiny: Project,
    rewrite: Rewrite,
    recorder: Recorder,
    scenario: str,
    action: str,
    crash: str,
) -> None:
    """Kill the deploy process, or the local cloud, as the first step of a kind starts; run
    the same command again: it converges, status is true, the registries name only shards
    that exist, and a deploy after it makes no mutating call."""
    project = tiny
    if scenario == "cross-region move":
        project = rewrite(project, _two_regions)
    if scenario == "cleanup":
        project = rewrite(project, _due_at_once)
    root = str(project.root)
    if scenario != "first deploy":
        sk("deploy", root, "--yes")
    if scenario in ("reshard", "rollback"):
        project = rewrite(project, lambda c: c["groups"]["us"].update(shards=2))
    if scenario in ("cross-region move", "cleanup"):
        project = rewrite(project, _to_west)
    if scenario in ("rollback", "cleanup"):
        sk("deploy", root, "--yes")
    command = COMMAND[scenario]

    d = Deployer(project, cloud.target(), warm=False)
    plan = {
        "deploy": d.plan,
        "rollback": d.plan_rollback,
        "destroy": d.plan_destroy,
        "cleanup": d.plan_cleanup,
    }[command]()
    victim = next(s.id for s in plan.steps if _kind(s) == action)

    def progress(step: Step, event: str) -> None:
        if event == "start" and step.id == victim:
            if crash == "deploy process":
                raise Killed
            cloud.kill()

    d.progress = progress
    with pytest.raises((Killed, ShardkitError)):
        d.apply(plan)
    if crash == "local cloud":
        cloud.restart()
        assert truth(project)["shards"] == []  # no function outlives a restart
        unlock_dead_holder(sk, project)
    assert sk("status", root)["status"] in ("failed", "drifted")  # never ok after a crash

    sk(command, root, "--yes")
    if scenario == "rollback":
        project = rewrite(project, lambda c: c["groups"]["us"].update(shards=1))
    assert_converged(sk, project, recorder, destroyed=scenario == "destroy")


def test_a_shard_local_up_restores_in_its_old_region_is_deleted_there_by_the_next_deploy(
    sk: Run, cloud: LocalCloud, tiny: Project, rewrite: Rewrite, recorder: Recorder
) -> None:
    """The local cloud is killed mid cross-region move (its tables come back); ``local up``
    restores the last deployment - the moved shard in its old region - and the next deploy
    moves it again and deletes it there: only the configured shards are left."""
    project = rewrite(tiny, _two_regions)
    root = str(project.root)
    sk("deploy", root, "--yes")
    project = rewrite(project, _to_west)
    d = Deployer(project, cloud.target(), warm=False)
    plan = d.plan()
    d.progress = kill_at(cloud, next(s.id for s in plan.steps if _kind(s) == "migrate:cutover"))
    with pytest.raises(ShardkitError):
        d.apply(plan)
    cloud.restart(tables_kept=True)
    assert truth(project)["shards"] == []  # no function outlives a restart
    unlock_dead_holder(sk, project)

    assert Deployer(project, cloud.target(), warm=False).restore() is not None  # `local up`
    assert live_functions("us-east-1") == {f"{P}-us-0", f"{P}-us-1"}  # the old placement
    assert live_functions("us-west-2") == set()
    sk("deploy", root, "--yes")
    assert live_functions("us-east-1") == {f"{P}-us-0"}
    assert live_functions("us-west-2") == {f"{P}-us-1"}
    assert_converged(sk, project, recorder)


# -- slot records across a restart (docs/architecture.md §4.4) -------------------------------------


def slot_records(project: Project) -> dict[int, tuple[str, int, str]]:
    """slot -> (owner, epoch, state) of group ``us``'s records in the state table (plain boto3)."""
    items = aws("dynamodb", "us-east-1").scan(TableName=f"{P}-state")["Items"]
    return {
        int(item["pk"]["S"].removeprefix("us#"), 16): (
            item["owner"]["S"],
            int(item["epoch"]["N"]),
            item["state"]["S"],
        )
        for item in items
        if item["sk"]["S"] == "\x00slot"
    }


@pytest.mark.parametrize("tables_kept", [False, True], ids=["tables deleted", "tables kept"])
def test_a_restart_gives_back_every_slot_record_of_the_live_layout(
    sk: Run,
    cloud: LocalCloud,
    tiny: Project,
    rewrite: Rewrite,
    recorder: Recorder,
    tables_kept: bool,
) -> None:
    """After a restart of the local cloud, and a command killed as its first step starts (it
    had taken the lock, which lives in the home region's state table: a table that did not come
    back is there again, empty), the next deploy starts from every slot record of the deployed
    map: active under the slot's owner. A record that came back is kept as it was (its epoch is
    the version that last changed it); only missing ones are written, at the map's version."""
    project = tiny
    root = str(project.root)
    sk("deploy", root, "--yes")
    project = rewrite(project, lambda c: c["groups"]["us"].update(shards=2))
    sk("deploy", root, "--yes")
    before = slot_records(project)
    assert {epoch for _, epoch, _ in before.values()} == {1, 2}  # us-1's slots moved at v2

    cloud.kill()
    cloud.restart(tables_kept=tables_kept)
    d = Deployer(project, cloud.target())

    def killed(step: Step, event: str) -> None:
        raise Killed

    d.progress = killed
    with pytest.raises(Killed):
        d.apply(d.plan())
    sk("deploy", root, "--yes")

    live = registry_map(project, "us-east-1")
    assert live is not None and live.version == 2
    owners = {slot: (shard.id, "active") for slot, shard in enumerate(live.groups["us"].primary)}
    after = slot_records(project)
    assert {slot: (owner, state) for slot, (owner, _, state) in after.items()} == owners
    assert after == before if tables_kept else {e for _, e, _ in after.values()} == {2}
    assert_converged(sk, project, recorder)
