"""Deploy, status, destroy and rollback: the stages put together.

``config -> map (signed) -> code package -> blueprint -> plan (pure) -> executor``. Each command is
a different desired state planned against the same deployment record: deploy wants the project
as configured, destroy wants nothing, rollback wants the previous deployment.

Applying takes the deployment's lock (:mod:`shardkit.deploy.lock`) and loads the record under it
- except for a plan with nothing to do, which makes no mutating call at all (docs/architecture.md
§4.6). A restarted local cloud has lost what the record lists but DynamoDB, whose tables and
items come back with the server (:mod:`shardkit.local.journal`): every apply first re-creates the
recorded deployment - adopting the tables with their items and slot records, writing the slot
records they lack (all of a table that did not come back) - and uploads the record again (a
*restore*); ``plan`` shows a deploy that does so (``Plan.restores``) without doing it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import kinds
from .._files import write_bytes_atomic
from ..aws.facade import Aws
from ..blueprint.definition import (
    DEFAULT_BLUEPRINT,
    CodeArtifact,
    expand,
    load_definition,
    region_resources,
)
from ..blueprint.model import Blueprint, Resource
from ..config.build import build_map, rebase_map, same_routing, signing_key_for
from ..config.loader import Project
from ..errors import AwsNotFoundError, DeployError, MapError, PlanFileError, PlanStaleError
from ..keys import format_trusted_keys, load_trusted_keys
from ..kinds import Context
from ..migrate.deploy import SlotBatch, cleanup_batches, slot_batches
from ..migrate.ledger import Ledger
from ..migrate.plan import placements
from ..sharding.codec import decode_map, encode_map
from ..sharding.layout import LayoutChange, apply_layout
from ..sharding.shardmap import ShardMap
from .executor import ApplyResult, Executor, Progress, check_base
from .fence import Events, unrecorded
from .handler import check_handler
from .health import Observed, assess
from .lock import Lease, LockInfo
from .migration import only_cleanup, plan_slots, summarize
from .migration import status as migration_status
from .package import build_package
from .plan import REGISTRY_KEY, Plan, make_plan
from .record import Record
from .state import DeploymentState, Home

__all__ = ["Deployer", "Target"]

#: The record lives in an S3 bucket and its lock in a DynamoDB table of the home region.
_HOME_KINDS = frozenset({"s3_bucket", "dynamodb_table"})

# Republish an unchanged map once less than this share of its lifetime is left.
_REFRESH_FRACTION = 0.5

Notify = Callable[[str], None]


@dataclass
class Target:
    """Where a project deploys: real AWS or the local cloud; only endpoint and creds differ."""

    name: str  # "aws" | "local"
    aws: Aws
    account: str
    partition: str = "aws"
    instance: str = ""  # the local cloud's instance id (a restart changes it)
    endpoint: str | None = None


class Deployer:
    """The deploy commands for one project and target."""

    def __init__(
        self,
        project: Project,
        target: Target,
        *,
        progress: Progress | None = None,
        notify: Notify | None = None,
        vendor: bool = False,
        dependencies: Mapping[str, bytes] | None = None,
        lock_timeout: float = 0.0,
        events: Events | None = None,
        warm: bool = True,
    ) -> None:
        """``vendor``: put the data plane's dependency wheels in the code package (what real
        AWS needs; the local cloud runs functions with this machine's packages).
        ``progress`` hears of every step, ``notify`` of what happens besides (a restore, a
        wait for the lock). ``lock_timeout``: seconds to wait for another command's lock.
        ``dependencies``: the dependency files to package as they are, instead of fetching
        wheels (the controller function passes those of its own package). ``events``: a live
        migration's progress. ``warm``: a migration's prepare step invokes the destination
        shards (off where nothing can run a function, such as moto in-process)."""
        self.project = project
        self.target = target
        self.progress = progress
        self.notify = notify or (lambda message: None)
        self.vendor = vendor
        self.dependencies = dependencies
        self.events = events  # a live migration's progress (shardkit.migrate.live)
        self.warm = warm
        # The last map built, by what it was built from: a long-lived deployer (`shardkit dev`)
        # re-plans after every save, and a code change leaves the map's inputs as they were.
        self._built: tuple[tuple[Any, ...], ShardMap] | None = None
        self.lock_timeout = lock_timeout
        self.definition = load_definition(project.config.proxy.blueprint)
        self.home = self._home(project.config.home_region)
        self.state = DeploymentState(
            project.state_dir,
            target.name,
            project.config.project.name,
            target.aws,
            self.home,
            elsewhere=[self._home(r) for r in project.config.regions if r != self.home.region],
            on_save=self._publish_local if target.name == "local" else None,
        )
        self.ledger = Ledger(self.state.cache.root)  # migrations: running, cleanups due

    # -- reading ---------------------------------------------------------------------------

    def record(self) -> Record:
        """The deployment record (read-only calls to the home region)."""
        record = self.state.load()
        if self.target.name == "local" and record.resources:
            from ..local.routes import published

            if not published(self.project.root):  # recorded by a shardkit that did not publish
                self._publish_local(record)
        return record

    def deployed_map(self, record: Record | None = None) -> ShardMap | None:
        """The map the deployment last published, verified; ``None`` when there is none. A
        record whose copy is unreadable (damaged, tampered with) is answered from the
        registries: the copy one serves whose hash is the one recorded. When none does, the
        deployed map is unknown (``None``): the next deploy publishes a new, higher version."""
        envelope = self._deployed_envelope(record or self.record())
        return None if envelope is None else self._decode(envelope)

    def _deployed_envelope(self, record: Record) -> bytes | None:
        if record.map_envelope is not None and self._decodes(record.map_envelope):
            return record.map_envelope
        if record.map_envelope is None and not record.map_sha256:
            return None
        for region, bucket in sorted(record.buckets().items()):
            served = self._registry(region, bucket) or b""
            if hashlib.sha256(served).hexdigest() == record.map_sha256 and self._decodes(served):
                return served
        return None

    def decode(self, data: bytes) -> ShardMap:
        """A map this project signed (expired or not), e.g. one of the deployment history."""
        try:
            return self._decode(data)
        except MapError as exc:
            raise DeployError(
                f"a deployed map cannot be read: {exc.message}",
                hint=exc.hint,
            ) from None

    def _decodes(self, envelope: bytes) -> bool:
        try:
            self._decode(envelope)
        except MapError:
            return False
        return True

    def _decode(self, envelope: bytes) -> ShardMap:
        return decode_map(envelope, load_trusted_keys(self.project.keys_dir), now=float("-inf"))

    def _registry(self, region: str, bucket: str) -> bytes | None:
        """What the registry of ``region`` serves (one read call); ``None`` when nothing."""
        try:
            answer = self.target.aws.call(
                "s3", region, "get_object", resource=bucket, Bucket=bucket, Key=REGISTRY_KEY
            )
        except AwsNotFoundError:
            return None
        body: bytes = answer["Body"].read()
        return body

    def _stale_registries(self, envelope: bytes | None, buckets: Mapping[str, str]) -> list[str]:
        """Regions (of ``buckets``: region -> bucket) whose registry does not serve
        ``envelope``: deleted, replaced or never written behind the record's back."""
        return sorted(r for r, b in buckets.items() if self._registry(r, b) != envelope)

    def needs_restore(self, record: Record | None = None) -> bool:
        """The local cloud restarted since the last apply: what is recorded is not there."""
        record = record or self.record()
        return (
            self.target.name == "local"
            and bool(record.resources)
            and record.local_instance != self.target.instance
        )

    def lock_holder(self) -> LockInfo | None:
        return self.state.lock().current()

    # -- planning --------------------------------------------------------------------------

    def plan(self, *, refresh: bool = False, changes: Sequence[LayoutChange] = ()) -> Plan:
        """Plan the project as configured. ``refresh`` first checks (read-only) that what the
        record lists still exists, and plans to re-create whatever was deleted behind
        shardkit's back. On a restarted local cloud the plan re-creates everything.
        ``changes``: the auto-shard controller's layout changes, applied to the deployed map (an
        autoshard group otherwise keeps the layout deployed)."""
        record = self.record()
        _check_layout(record)
        restoring = self.needs_restore(record)
        actual = record.emptied() if restoring else record
        deployed = self.deployed_map(record)
        shard_map, envelope = self._next_map(deployed, record, tuple(changes))
        if restoring and envelope is None:  # the registries came back empty: publish it again
            envelope = self._deployed_envelope(record)
        package = build_package(self.project, self._dependencies())
        self._cache_artifact(package.sha256, package.data)
        check_handler(
            package.data,
            self.project.config.proxy.handler,
            self._artifact_path(package.sha256, "handler"),
        )
        blueprint = self._blueprint(shard_map, package.artifact)
        publish_to = None
        if envelope is None:  # the deployed map stays: publish it wherever it is not served
            served = self._deployed_envelope(record)
            publish_to = self._registries_to_fix(blueprint, record, served)
            envelope = served if publish_to else None
        if refresh and not restoring:
            gone = set(self._missing(record))
            actual = record.model_copy(
                update={"resources": {k: r for k, r in record.resources.items() if k not in gone}}
            )
        plan = make_plan(
            blueprint,
            actual,
            project_root=str(self.project.root),
            artifact=_artifact_dict(package.artifact),
            map_envelope=envelope,
            map_version=shard_map.version,
            publish_to=publish_to,
            slots=plan_slots(
                self.project,
                blueprint,
                self.ledger,
                deployed,
                shard_map,
                *self._unrecorded(blueprint, record, deployed, probe=restoring),
                warm=self.warm,
            ),
        )
        plan = replace(plan, base=record.fingerprint())  # what is recorded is what it replaces
        if restoring:
            plan = self._as_restore(plan, record)
        return only_cleanup(plan, record.deployment)

    def _registries_to_fix(
        self, blueprint: Blueprint, record: Record, envelope: bytes | None
    ) -> list[str]:
        """The regions whose registry must be (re)written with the deployed map: all of them
        when the record's own copy was unreadable (publishing repairs it), else those that do
        not serve it - their bucket is new, or the map was deleted or replaced there."""
        buckets = {r.region: r.name for r in blueprint.of_kind("s3_bucket")}
        if envelope != record.map_envelope:
            return sorted(buckets)
        recorded = record.buckets()
        stale = self._stale_registries(
            envelope, {r: b for r, b in buckets.items() if r in recorded}
        )
        return sorted(set(stale) | (set(buckets) - set(recorded)))

    def _as_restore(self, plan: Plan, record: Record) -> Plan:
        """A plan onto a restarted local cloud: when it re-creates exactly the recorded
        deployment it is that deployment's restore, not a new deployment."""
        plan = replace(plan, restores=self.target.instance)
        current = self.state.history()
        if record.deployment in current:
            entry = self.state.load_history(record.deployment)
            if entry.blueprint == plan.blueprint and entry.map == plan.map_envelope:
                return replace(plan, kind="restore", deployment=record.deployment)
        return plan

    def _dependencies(self) -> dict[str, bytes] | None:
        if self.dependencies is not None:
            return dict(self.dependencies)
        if not self.vendor:
            return None
        from .vendor import fetch_wheels, requirements, wheel_files

        props = next(
            item["props"] for item in self.definition["shard"] if item["kind"] == "lambda_function"
        )
        names = requirements(control=self.project.config.autoshards)
        return wheel_files(fetch_wheels(props["runtime"], props["architecture"], names=names))

    def _missing(self, record: Record) -> list[str]:
        """Recorded resources that are gone (each kind's probe: one read call each)."""
        return sorted(
            key
            for key, rec in record.resources.items()
            if not rec.retained and not self._exists(rec.kind, rec.region, rec.name, rec.props)
        )

    def plan_bootstrap(self) -> Plan:
        """Only the per-region foundation - artifact and registry buckets, state tables - so a
        privileged role can create it once and deploys need no rights to create buckets."""
        shard_map = build_map(self.project.config)
        blueprint = self._blueprint(shard_map, CodeArtifact(key="", sha256=""))
        foundation = Blueprint(
            blueprint.project,
            blueprint.name,
            blueprint.account,
            tuple(r for r in blueprint.resources if kinds.get(r.kind).bootstrap),
        )
        record = self.record()
        plan = make_plan(
            foundation,
            record,
            project_root=str(self.project.root),
            artifact=None,
            map_envelope=None,
            map_version=0,
            kind="bootstrap",
        )
        steps = tuple(
            replace(s, id=i)
            for i, s in enumerate(s for s in plan.steps if s.action in ("create", "update"))
        )
        return replace(plan, steps=steps, deployment=record.deployment)

    def plan_cleanup(self, *, now: bool = False) -> Plan:
        """Only the cleanup of source copies whose rollback window is over (every pending one
        with ``now``): what ``shardkit cleanup`` applies. The deployment stays as it is."""
        record = self.record()
        if not record.deployment or record.deployment not in self.state.history():
            raise DeployError(
                "nothing is deployed, so there is nothing to clean up",
                hint="`shardkit status` shows what is deployed",
            )
        blueprint = Blueprint.from_dict(self.state.load_history(record.deployment).blueprint)
        plan = make_plan(
            blueprint,
            record,
            project_root=str(self.project.root),
            artifact=None,
            map_envelope=None,
            map_version=record.map_version,
            slots=cleanup_batches(self.ledger.due(time.time(), all_=now)),
            kind="cleanup",
        )
        steps = tuple(
            replace(s, id=i) for i, s in enumerate(s for s in plan.steps if s.action == "migrate")
        )
        return replace(plan, steps=steps, deployment=record.deployment)

    def migration_summary(self, plan: Plan) -> list[dict[str, Any]]:
        """What the plan's migration moves, per jurisdiction and region (reads the tables)."""
        from .fence import state_table

        jurisdiction = {r: c.jurisdiction for r, c in self.project.config.regions.items()}
        return summarize(plan, jurisdiction, lambda r, name: state_table(self.target.aws, r, name))

    def plan_destroy(self, *, delete_data: bool = False) -> Plan:
        """Everything deleted, except - unless ``delete_data`` - the state tables (they hold
        the shards' data) and the home region's bucket (it holds the deployment record, which
        then says "destroyed")."""
        empty = Blueprint(self.project.config.project.name, DEFAULT_BLUEPRINT, self.target.account)
        return make_plan(
            empty,
            self.record(),
            project_root=str(self.project.root),
            artifact=None,
            map_envelope=None,
            map_version=0,
            delete_data=delete_data,
            keep=frozenset({self.state.home_key}),
            kind="destroy",
        )

    def plan_rollback(self) -> Plan:
        """Back to the deployment before the current one, as a new, higher map version."""
        record = self.record()
        _check_layout(record)
        earlier = [n for n in self.state.history() if n < record.deployment]
        if not earlier:
            raise DeployError(
                "there is no earlier successful deployment to roll back to",
                hint="`shardkit status` shows the deployment history",
            )
        entry = self.state.load_history(earlier[-1])
        blueprint = Blueprint.from_dict(entry.blueprint)
        current = self.deployed_map(record)
        envelope, version, slots = None, record.map_version, []
        if entry.map and current is not None:
            old = self._decode(entry.map)
            shard_map = rebase_map(old, current, ttl_s=self._ttl())
            envelope, version = self._sign(shard_map), shard_map.version
            missing = self._unrecorded(blueprint, record, current)
            slots = plan_slots(
                self.project, blueprint, self.ledger, current, shard_map, *missing, warm=self.warm
            )
        return make_plan(
            blueprint,
            record,
            project_root=str(self.project.root),
            artifact=_blueprint_artifact(blueprint),
            map_envelope=envelope,
            map_version=version,
            slots=slots,
            kind="rollback",
        )

    def plan_restore(self, record: Record | None = None) -> Plan:
        """The recorded deployment, onto a fresh (restarted) local cloud."""
        record = record or self.record()
        _check_layout(record)
        entry = self.state.load_history(record.deployment)
        blueprint = Blueprint.from_dict(entry.blueprint)
        current = self.deployed_map(record)
        plan = make_plan(
            blueprint,
            record.emptied().model_copy(update={"deployment": record.deployment - 1}),
            project_root=str(self.project.root),
            artifact=_blueprint_artifact(blueprint),
            map_envelope=entry.map or None,
            map_version=record.map_version,
            slots=self._restored_slots(blueprint, record, current),
            kind="restore",
        )
        # A restore re-creates the same deployment, so it is based on the record as it stands.
        return replace(
            plan,
            base=record.fingerprint(),
            deployment=record.deployment,
            restores=self.target.instance,
        )

    # -- applying --------------------------------------------------------------------------

    def apply(self, plan: Plan, *, replan: Callable[[], Plan] | None = None) -> ApplyResult:
        """Apply ``plan`` under the deployment's lock. A plan with nothing to do returns at
        once, without the lock. On a restarted local cloud the recorded deployment is
        restored first. ``replan``: when the deployed state changed while this command waited
        for the lock, apply a fresh plan from it instead of refusing the stale one."""
        self._check_plan(plan)
        record = self.record()
        restoring = self.needs_restore(record)
        if plan.is_noop and plan.base == record.fingerprint() and not restoring:
            return ApplyResult(plan.plan_id, 0, 0, 0, record, kind=plan.kind)
        if replan is None and not restoring and plan.base != record.fingerprint():
            # refused before anything is locked or written (unless it resumes its own failure)
            check_base(plan, record, self.state.read_journal(plan.plan_id))
        if not self.state.remote_found:
            self._ensure_home()
        with self.state.locked(
            f"{plan.kind} {self.project.root}",
            timeout=self.lock_timeout,
            on_wait=self._waiting,
            on_take_over=self._taken_over,
        ) as lease:
            record = self.record()
            if self.needs_restore(record) and plan.restores != self.target.instance:
                record = self._execute(self.plan_restore(record), record, lease).record
            if replan is not None and self._plan_is_stale(plan, record):
                plan = replan()
                if plan.is_noop:
                    self.notify("another command already deployed this: nothing left to do")
                    return ApplyResult(plan.plan_id, 0, 0, 0, record, kind=plan.kind)
            result = self._execute(plan, record, lease)
        self.state.cache.write_outputs(result.record.outputs())
        return result

    def restore(self) -> ApplyResult | None:
        """Re-create the recorded deployment on a restarted local cloud (``local up``); ``None``
        when there is nothing to restore - also when no deployment ever succeeded (a first
        deploy killed with its local cloud): then the next ``deploy`` makes it afresh."""
        record = self.record()
        if not self.needs_restore(record) or record.deployment not in self.state.history():
            return None
        return self.apply(self.plan_restore(record))

    def unlock(self, lock_id: str) -> LockInfo:
        """Break the deployment lock ``lock_id`` (its holder died); returns what was broken."""
        return self.state.lock().force_unlock(lock_id)

    @property
    def outputs_path(self) -> Path:
        return self.state.cache.root / "outputs.json"

    def _execute(self, plan: Plan, record: Record, lease: Lease) -> ApplyResult:
        if plan.restores:
            self.notify(
                f"local cloud restarted: restoring deployment {record.deployment} "
                f"({len(plan.steps)} steps)"
            )
        data = self._load_artifact(plan.artifact) if _uploads(plan) else None
        executor = Executor(
            self.target.aws,
            self.state,
            partition=self.target.partition,
            progress=self.progress,
            events=self.events,
        )
        result = executor.apply(
            plan,
            record,
            lease=lease,
            artifact_data=data,
            local_instance=self.target.instance,
            secrets=self._secrets(plan),
        )
        if plan.restores:
            # The record itself went up with the steps (every save writes the home bucket);
            # the history of earlier deployments, which no step writes, follows it.
            self.state.upload_history()
        return result

    def _secrets(self, plan: Plan) -> dict[str, bytes]:
        """The values the plan's secrets are made with (read only when it writes one)."""
        if not any(s.kind == "secret" and s.action in ("create", "update") for s in plan.steps):
            return {}
        return {"signing_key": self._signing_key_pem()}

    def _signing_key_pem(self) -> bytes:
        key = signing_key_for(self.project)  # made first when the project says so
        return (self.project.keys_dir / f"{key.key_id}.key").read_bytes()

    def _plan_is_stale(self, plan: Plan, record: Record) -> bool:
        try:
            check_base(plan, record, self.state.read_journal(plan.plan_id))
        except PlanStaleError:
            return True
        return False

    def _waiting(self, holder: LockInfo) -> None:
        self.notify(
            f"waiting up to {self.lock_timeout:g} s for the deployment lock held by "
            f"{holder.describe(time.time())}"
        )

    def _taken_over(self, holder: LockInfo) -> None:
        self.notify(
            f"took over the deployment lock held by {holder.describe(time.time())}: "
            "that process is no longer running"
        )

    def _ensure_home(self) -> None:
        """The home region's bucket and table hold the record and the lock, so they must exist
        before the lock can be taken: a first deploy makes them (idempotently - two first
        deploys racing both adopt them, and then only one gets the lock)."""
        ctx = Context(self.target.aws, self.target.account, self.target.partition)
        for r in self._home_resources():
            if r.kind in _HOME_KINDS and not self._exists(r.kind, r.region, r.name, r.props):
                kinds.get(r.kind).apply("create", ctx, r.region, r.name, r.props)

    def _publish_local(self, record: Record) -> None:
        """Tell the local cloud what it serves now: Function URLs and code packages."""
        from ..local.routes import Routes, publish

        publish(self.project.root, Routes(urls=record.url_targets(), code=record.code_locations()))

    def status(self) -> dict[str, Any]:
        """What is recorded, checked against what exists (read-only calls): the status says
        ``ok`` only when nothing is missing, pending, drifted or unreadable (see
        :mod:`shardkit.deploy.health`)."""
        record = self.record()
        holder = self.lock_holder()
        missing = self._missing(record)
        status, problems = assess(self._observe(record, missing))
        pending = self.state.pending()
        return {
            **_status_dict(
                record.model_copy(update={"home_region": self.home.region}),
                self.target.name,
                status,
                problems,
                missing=missing,
                pending=pending,
                history=self.state.history(),
                lock=None if holder is None else vars(holder),
            ),
            **migration_status(self.ledger, pending),
        }

    def _observe(self, record: Record, missing: list[str]) -> Observed:
        """Everything :func:`assess` judges, looked at now: the registries, the map, what
        exists."""
        map_problem, stale, unnamed = "", [], []
        registries = record.buckets()
        if record.status == "destroyed":  # a kept bucket (the home region's) too: it serves
            kept = {r.region: r.name for r in record.of_kind("s3_bucket").values()}
            stale = [r for r, b in sorted(kept.items()) if self._registry(r, b) is not None]
        elif record.map_envelope is not None or record.map_sha256:
            envelope = self._deployed_envelope(record)
            if envelope != record.map_envelope:
                map_problem = "the record's copy of the deployed map is unreadable or tampered with"
            if envelope is not None:
                regions = {r: b for r, b in registries.items() if r in record.map_regions}
                stale = self._stale_registries(envelope, regions)
                named = {s.id for s in self._decode(envelope).shards}
                unnamed = sorted(named - set(record.functions()))
        return Observed(
            recorded=record.status,
            deployment=record.deployment,
            resources=len(record.resources),
            missing=missing,
            pending=self.state.pending(),
            restarted=self.needs_restore(record),
            map_problem=map_problem,
            stale_registries=stale,
            unnamed=unnamed,
        )

    def outputs(self, record: Record | None = None) -> dict[str, Any]:
        """Function URLs per shard, tables and buckets per region: what callers need."""
        return (record or self.record()).outputs()

    # -- helpers ---------------------------------------------------------------------------

    def _next_map(
        self, deployed: ShardMap | None, record: Record, changes: tuple[LayoutChange, ...] = ()
    ) -> tuple[ShardMap, bytes | None]:
        """The map to deploy; ``None`` bytes when the deployed one still serves as it is."""
        config = self.project.config
        floor = max(self._local_map_version(), record.map_version_max)
        inputs = (config, deployed.version if deployed else None, floor, changes)
        if self._built is not None and self._built[0] == inputs:
            candidate = self._built[1]
        else:
            layout = None
            if changes:
                if deployed is None:
                    raise DeployError(
                        "a layout change needs a deployed map to change",
                        hint="deploy the project first: `shardkit deploy`",
                    )
                layout = apply_layout(deployed, changes, ttl_s=self._ttl())
            candidate = build_map(config, deployed, min_version=floor + 1, layout=layout)
            self._built = (inputs, candidate)
        if deployed is not None and same_routing(candidate, deployed) and not self._stale(deployed):
            return deployed, None
        return candidate, self._sign(candidate)

    def _stale(self, shard_map: ShardMap) -> bool:
        left = shard_map.expires_at - time.time()
        return left < _REFRESH_FRACTION * (shard_map.expires_at - shard_map.created_at)

    def _local_map_version(self) -> int:
        """The version of a map built locally with `shardkit map build`, so versions never clash."""
        from ..sharding.codec import peek_envelope

        path = self.project.map_path
        try:
            return peek_envelope(path.read_bytes()).version if path.exists() else 0
        except MapError:
            return 0

    def _sign(self, shard_map: ShardMap) -> bytes:
        key = signing_key_for(self.project)
        return encode_map(shard_map, key.key_id, key.sign)

    def _ttl(self) -> int:
        return int(self.project.config.signing.map_ttl_hours * 3600)

    def _blueprint(self, shard_map: ShardMap, artifact: CodeArtifact) -> Blueprint:
        keys = format_trusted_keys(self.project.keys_dir)
        return expand(
            self.definition,
            config=self.project.config,
            shard_map=shard_map,
            account=self.target.account,
            code=artifact,
            partition=self.target.partition,
            trusted_keys=keys,
            # only the local cloud's controller runs beside the project; on AWS it carries it
            project_root=str(self.project.root.resolve()) if self.target.name == "local" else "",
            signing_key_sha256=(
                hashlib.sha256(self._signing_key_pem()).hexdigest()
                if self.project.config.autoshards
                else ""
            ),
        )

    def _check_plan(self, plan: Plan) -> None:
        name = self.project.config.project.name
        if plan.project != name or Path(plan.project_root).resolve() != self.project.root.resolve():
            raise PlanFileError(
                f"the plan is for project {plan.project!r} at {plan.project_root}, "
                f"not {name!r} at {self.project.root}"
            )
        if plan.target != self.target.name or plan.account != self.target.account:
            raise PlanFileError(
                f"the plan is for target {plan.target} (account {plan.account}), "
                f"not {self.target.name} (account {self.target.account})"
            )

    def _artifact_path(self, sha256: str, suffix: str = "zip") -> Path:
        return self.project.state_dir / "artifacts" / f"{sha256}.{suffix}"

    def _cache_artifact(self, sha256: str, data: bytes) -> None:
        path = self._artifact_path(sha256)
        if not path.exists():
            write_bytes_atomic(path, data)

    def _load_artifact(self, artifact: dict[str, str] | None) -> bytes:
        if artifact is None:
            raise PlanFileError("the plan uploads code but names no code package")
        path = self._artifact_path(artifact["sha256"])
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DeployError(
                f"code package {artifact['sha256'][:12]} is no longer cached at {path}",
                hint="make a fresh plan with `shardkit plan`",
            ) from None
        if hashlib.sha256(data).hexdigest() != artifact["sha256"]:
            raise DeployError(
                f"cached code package {path} does not match its hash",
                hint="delete it and make a fresh plan with `shardkit plan`",
            )
        return data

    def _exists(self, kind: str, region: str, name: str, props: Mapping[str, Any]) -> bool:
        return kinds.get(kind).exists(self.target.aws, region, name, props)

    def _home_resources(self, region: str | None = None) -> list[Resource]:
        return region_resources(
            self.definition,
            config=self.project.config,
            region=region or self.project.config.home_region,
            account=self.target.account,
            partition=self.target.partition,
        )

    def _unrecorded(
        self,
        blueprint: Blueprint,
        record: Record,
        deployed: ShardMap | None,
        *,
        probe: bool = False,
    ) -> tuple[set[str], set[tuple[str, int]]]:
        """Where the records of ``deployed``'s slots are not: the regions whose state table the
        plan creates (empty), and the slots (group, slot) whose record their owner's table lacks.

        ``probe``: on a restarted local cloud, ask. Its tables come back with their items (the
        server journals DynamoDB) unless its data was removed; and a table that exists is no
        proof of its records: taking the deploy lock re-creates the home region's table (the lock
        lives there) empty, and a command killed after that leaves it so for the next one.
        """
        tables = blueprint.of_kind("dynamodb_table")
        if not probe:
            return {r.region for r in tables if r.key not in record.resources}, set()
        fresh = {r.region for r in tables if not self._exists(r.kind, r.region, r.name, r.props)}
        if deployed is None:
            return fresh, set()
        names = {r.region: r.name for r in tables if r.region not in fresh}
        owned: dict[str, list[tuple[str, int]]] = {}
        for group in sorted(deployed.groups):
            for slot, place in enumerate(placements(deployed, group)):
                owned.setdefault(place.region, []).append((group, slot))
        missing = [
            unrecorded(self.target.aws, region, names[region], slots)
            for region, slots in sorted(owned.items())
            if region in names
        ]
        return fresh, set().union(*missing)

    def _restored_slots(
        self, blueprint: Blueprint, record: Record, current: ShardMap | None
    ) -> list[SlotBatch]:
        """The slot records a restore writes: every one the state tables lack (a table that
        came back holds its records, and the items they fence: those stay as they are)."""
        if current is None:
            return []
        return slot_batches(
            current, current, *self._unrecorded(blueprint, record, current, probe=True)
        )

    def _home(self, region: str) -> Home:
        names = {r.kind: r.name for r in self._home_resources(region)}
        if not set(names) >= _HOME_KINDS:
            raise DeployError(
                f"blueprint {self.definition['name']!r} has no per-region s3_bucket and "
                "dynamodb_table: the deployment record and its lock live there",
                hint="add both to the blueprint's [[region]] resources",
            )
        return Home(region, names["s3_bucket"], names["dynamodb_table"])


def nothing_deployed(project: Project, target: str) -> dict[str, Any]:
    """The status of a project with nothing deployed on ``target`` (no call made)."""
    record = Record.empty(project.config.project.name, target, project.config.home_region)
    return _status_dict(record, target, *assess(Observed(record.status, 0, 0)))


def _status_dict(
    record: Record,
    target: str,
    status: str,
    problems: list[str],
    *,
    missing: list[str] | None = None,
    pending: list[str] | None = None,
    history: list[int] | None = None,
    lock: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "project": record.project,
        "target": target,
        "account": record.account,
        "home_region": record.home_region,
        "status": status,
        "problems": problems,
        "deployment": record.deployment,
        "map_version": record.map_version,
        "regions": record.regions(),
        "resources": len(record.resources),
        "missing": missing or [],
        "retained": record.retained(),
        "pending_applies": pending or [],
        "history": history or [],
        "lock": lock,
        "shards": record.shards(),
    }


def _check_layout(record: Record) -> None:
    """A deployment made before state was addressed by slot keeps per-shard epoch records and
    ``{shard}#{key}`` items; deploying over it would mix the two layouts."""
    if record.epochs:
        raise DeployError(
            f"deployment {record.deployment} of {record.project} keeps its state in the old "
            "per-shard layout ({{shard}}#{{key}} items fenced by per-shard epochs); this shardkit "
            "addresses state by slot and cannot deploy over it",
            hint="export what you need, then `shardkit destroy --delete-data` and deploy again",
        )


def _artifact_dict(artifact: CodeArtifact) -> dict[str, str]:
    return {"key": artifact.key, "sha256": artifact.sha256}


def _blueprint_artifact(blueprint: Blueprint) -> dict[str, str] | None:
    for r in blueprint.of_kind("lambda_function"):
        code = r.props["code"]
        return {"key": code["key"], "sha256": code["sha256"]}
    return None


def _uploads(plan: Plan) -> bool:
    return any(s.action == "upload" for s in plan.steps)
