"""The executor: the only code that changes AWS.

It applies a :class:`Plan` step by step, while the caller (:class:`~shardkit.deploy.engine.
Deployer`) holds the deployment's lock and has loaded the record under it:

1. the plan's ``base`` must be the fingerprint of the deployed record - or, when this same plan
   failed earlier, the fingerprint of the record that failure left behind (a resume);
2. the steps run in four global phases - make (create, update, upload, fence), migrate (a
   live migration's steps), publish the map, delete - each across every region in parallel
   (steps within a region in plan order), and a phase starts only once the one before it is
   done everywhere; before a migration starts and before the map goes out the record is saved
   with what now exists (status ``applying``), so no slot moves to a shard and no registry
   names one before every region has it and its function is on record, no map goes out before
   every region has moved its slots, and no shard is deleted while a registry still names it;
3. every completed step is appended (and fsynced) to the plan's journal before the next starts;
   the journal is checkpointed to the home bucket every ``CHECKPOINT_STEPS`` steps or
   ``CHECKPOINT_S`` seconds, and when the apply fails, so another machine can resume it;
4. on failure, the record is replaced by one that records exactly the completed steps and the
   error is raised; running the same plan again skips what the journal says is done;
5. on success, the record (with the published map) and a history entry are written and the
   journal is removed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import kinds
from ..aws.facade import Aws
from ..errors import ApplyFailedError, DeployError, PlanStaleError, ShardkitError
from ..kinds import Context
from .fence import Events, migrate_step, slot_records
from .lock import Lease
from .plan import Plan, Step
from .record import HistoryEntry, Record, RecordBuilder, ResourceRecord
from .state import DeploymentState

__all__ = ["ApplyResult", "Executor", "check_base"]

Progress = Callable[[Step, str], None]  # (step, "start" | "done" | "skip")

CHECKPOINT_STEPS = 20
CHECKPOINT_S = 15.0


@dataclass
class ApplyResult:
    plan_id: str
    steps_done: int
    steps_skipped: int
    mutating_calls: int
    record: Record
    resumed: bool = False
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    kind: str = "deploy"


class Executor:
    def __init__(
        self,
        aws: Aws,
        state: DeploymentState,
        *,
        partition: str = "aws",
        progress: Progress | None = None,
        events: Events | None = None,
    ) -> None:
        """``events``: the progress events of ``migrate`` steps (shardkit.migrate.live)."""
        self.aws = aws
        self.state = state
        self.partition = partition
        self.progress = progress or (lambda step, event: None)
        self.events = events
        self.plan_id = ""

    def apply(
        self,
        plan: Plan,
        record: Record,
        *,
        lease: Lease | None = None,
        artifact_data: bytes | None = None,
        local_instance: str = "",
        secrets: Mapping[str, bytes] | None = None,
    ) -> ApplyResult:
        """Apply ``plan`` to the deployment ``record`` describes (loaded under the lock);
        ``secrets``: the values of the secrets it writes (never recorded)."""
        done = self.state.read_journal(plan.plan_id)
        skipped = len(done)
        resumed = bool(done)
        check_base(plan, record, done)
        if plan.restores and record.local_instance != plan.restores:
            # A restarted local cloud holds nothing the record lists (but the DynamoDB tables,
            # which the plan adopts): what the plan makes is all there is.
            record = record.emptied()
        if not resumed:
            self._supersede_unfinished()
        self.plan_id = plan.plan_id
        ctx = Context(
            self.aws, plan.account, self.partition, artifact_data, plan.map_envelope, secrets or {}
        )
        before = self.aws.mutating_calls
        instance = local_instance or record.local_instance
        self._latest = record
        errors = self._run(plan, done, ctx, lease, instance)
        builder = RecordBuilder(self._latest)
        _apply_steps(builder, plan, done)
        builder.set(account=plan.account, local_instance=instance)
        if errors:
            builder.set(status="failed")
            self.state.save(builder.build())
            self._checkpoint(plan)
            step, exc = errors[0]
            raise ApplyFailedError(
                f"step {step.id} ({step.action} {step.kind} {step.name} in {step.region}) "
                f"failed: {_describe(exc)}; {len(done)} of {len(plan.steps)} steps are done "
                f"and recorded"
            ) from exc
        record = self._finish(plan, builder)
        return ApplyResult(
            plan.plan_id,
            len(done) - skipped,
            skipped,
            self.aws.mutating_calls - before,
            record,
            resumed,
            {k: r.outputs for k, r in record.resources.items()},
            plan.kind,
        )

    def _checkpoint(self, plan: Plan) -> None:
        """Copy the journal to the home bucket - unless the plan deletes that bucket (destroy
        --delete-data): a copy written after it was emptied would keep it from going."""
        if not any(s.action == "delete" and s.key == self.state.home_key for s in plan.steps):
            self.state.checkpoint(plan.plan_id)

    def _supersede_unfinished(self) -> None:
        """A plan applied afresh changes the state any unfinished apply was based on, so those
        can no longer resume: their journals go (applying one again is then a stale plan)."""
        for plan_id in self.state.pending():
            self.state.finish_journal(plan_id)

    def _run(
        self,
        plan: Plan,
        done: dict[int, dict[str, Any]],
        ctx: Context,
        lease: Lease | None,
        local_instance: str,
    ) -> list[tuple[Step, BaseException]]:
        """The plan's phases one after the other, each across every region at once; a phase
        starts only when the one before it is done everywhere (see :func:`phases`)."""
        errors: list[tuple[Step, BaseException]] = []
        stop = threading.Event()
        lock = threading.Lock()
        checkpoint = _Checkpoint(lambda: self._checkpoint(plan))
        with self.state.journal(plan.plan_id) as journal:

            def run_region(steps: list[Step]) -> None:
                for step in steps:
                    if step.id in done:
                        self.progress(step, "skip")
                        continue
                    if stop.is_set():
                        return
                    if lease is not None and lease.lost.is_set():
                        with lock:
                            errors.append((step, _lock_lost(lease)))
                        stop.set()
                        return
                    self.progress(step, "start")
                    try:
                        outputs = self._step(step, ctx)
                    except Exception as exc:  # recorded and re-raised as ApplyFailedError
                        with lock:
                            errors.append((step, exc))
                        stop.set()
                        return
                    with lock:
                        journal(step.id, outputs)
                        done[step.id] = outputs
                        due = checkpoint.due()
                    if due:
                        checkpoint.save()
                    self.progress(step, "done")

            for phase in phases(plan):
                if stop.is_set():
                    break
                if phase[0].action in ("migrate", "publish", "unpublish") and any(
                    s.id not in done for s in phase
                ):
                    self._record_what_exists(plan, done, local_instance)
                by_region: dict[str, list[Step]] = {}
                for step in phase:
                    by_region.setdefault(step.region, []).append(step)
                with ThreadPoolExecutor(max_workers=max(1, min(8, len(by_region)))) as pool:
                    list(pool.map(run_region, by_region.values()))
        return errors

    def _record_what_exists(
        self, plan: Plan, done: dict[int, dict[str, Any]], local_instance: str
    ) -> None:
        """Record what exists before a migration moves slots to it or any registry names it:
        a client that meets a new shard in the map finds its function in the record (the local
        cloud finds its code there, so a migration can warm it); and a version about to be
        published is never signed again with other content, even if this process dies
        mid-way."""
        builder = RecordBuilder(self._latest)
        _apply_steps(builder, plan, done)
        builder.set(
            status="applying",
            map_version_max=max(self._latest.map_version_max, plan.map_version),
            account=plan.account,
            local_instance=local_instance,
        )
        self._latest = self.state.save(builder.build())

    def _step(self, step: Step, ctx: Context) -> dict[str, Any]:
        if step.action == "retain":
            return {}
        if step.action == "upload":
            self._put(step, ctx.artifact_data, "application/zip")
            return {}
        if step.action == "publish":
            out = self._put(step, ctx.map_envelope, "application/vnd.shardkit.map")
            return {"version_id": out.get("VersionId", "")}
        if step.action == "unpublish":
            self.aws.call(
                "s3",
                step.region,
                "delete_object",
                resource=step.name,
                Bucket=step.props["bucket"],
                Key=step.name,
            )
            return {}
        if step.action == "fence":
            return slot_records(self.aws, step.region, step.props)
        if step.action == "migrate":
            root, plan_id = self.state.cache.root, self.plan_id
            return migrate_step(self.aws, root, plan_id, step.region, step.props, self.events)
        return kinds.get(step.kind).apply(step.action, ctx, step.region, step.name, step.props)

    def _put(self, step: Step, body: bytes | None, content_type: str) -> dict[str, Any]:
        """The object a step names, into the bucket its props name (code package or map)."""
        return self.aws.call(
            "s3",
            step.region,
            "put_object",
            resource=step.name,
            Bucket=step.props["bucket"],
            Key=step.name,
            Body=body or b"",
            ContentType=content_type,
        )

    def _finish(self, plan: Plan, builder: RecordBuilder) -> Record:
        builder.set(status="destroyed" if plan.kind == "destroy" else "ok")
        if plan.kind in ("bootstrap", "cleanup"):  # not a deployment to roll back to
            record = self.state.save(builder.build())
            self.state.finish_journal(plan.plan_id)
            return record
        if plan.map_envelope is not None:
            builder.set(map_envelope=plan.map_envelope)
        builder.set(deployment=plan.deployment)
        record = builder.build()
        home_kept = self.state.home_kept(record)
        self.state.save_history(
            HistoryEntry(
                deployment=plan.deployment,
                blueprint=plan.blueprint,
                map=record.map_envelope or b"",
            ),
            remote=home_kept,
        )
        record = self.state.save(record)
        self.state.finish_journal(plan.plan_id, remote=home_kept)
        return record


def check_base(plan: Plan, record: Record, done: dict[int, dict[str, Any]]) -> None:
    """A plan applies to the state it was made against - or, resuming its own failed apply
    (``done`` is its journal), to the state that failure left."""
    unfinished = record.status in ("failed", "applying")
    if plan.base != record.fingerprint() and not (done and unfinished):
        raise PlanStaleError(
            f"the plan was made against deployed state {plan.base}, but the deployed "
            f"state is now {record.fingerprint()} (deployment {record.deployment})"
        )


class _Checkpoint:
    """When to copy the journal to the home bucket: every few steps or seconds."""

    def __init__(self, save: Callable[[], None]) -> None:
        self.save_fn, self.steps, self.last = save, 0, time.monotonic()

    def due(self) -> bool:
        self.steps += 1
        if self.steps >= CHECKPOINT_STEPS or time.monotonic() - self.last >= CHECKPOINT_S:
            self.steps, self.last = 0, time.monotonic()
            return True
        return False

    def save(self) -> None:
        self.save_fn()


def phases(plan: Plan) -> list[list[Step]]:
    """The plan's steps as global phases: first everything that makes or changes resources,
    uploads code or writes initial slot records; then a live migration's steps (they warm the
    new shards and move slots to them); then the map, in every region; then deletions. So no
    slot moves to a shard before it exists in every region, no registry names a shard before
    every region has it and has moved its slots, and a shard is deleted only once no registry
    names it any more - it keeps answering (with redirects) until then."""
    order = {"migrate": 1, "publish": 2, "unpublish": 2, "delete": 3, "retain": 3}
    grouped: list[list[Step]] = [[], [], [], []]
    for step in plan.steps:
        grouped[order.get(step.action, 0)].append(step)
    return [phase for phase in grouped if phase]


def _lock_lost(lease: Lease) -> DeployError:
    return DeployError(
        f"the deployment lock {lease.info.id} was broken by another command while this apply "
        "held it",
        hint="check who took it over; then run the command again to resume",
    )


def _apply_steps(builder: RecordBuilder, plan: Plan, done: dict[int, dict[str, Any]]) -> None:
    """Record exactly the completed steps - the truth about what now exists."""
    for step in plan.steps:
        if step.id in done:
            _RECORD[step.action](builder, step, done[step.id])
    published = [s for s in plan.steps if s.action == "publish"]
    if published and all(s.id in done for s in published):
        builder.set(
            map_version=plan.map_version,
            map_sha256=hashlib.sha256(plan.map_envelope or b"").hexdigest(),
        )


def _record_resource(builder: RecordBuilder, step: Step, outputs: dict[str, Any]) -> None:
    builder.put(
        step.key,
        ResourceRecord(
            kind=step.kind,
            name=step.name,
            region=step.region,
            shard=step.shard,
            fingerprint=step.fingerprint,
            props=dict(step.props),
            outputs=outputs,
        ),
    )


_RECORD: dict[str, Callable[[RecordBuilder, Step, dict[str, Any]], None]] = {
    "create": _record_resource,
    "update": _record_resource,
    "delete": lambda b, step, out: b.remove(step.key),
    "retain": lambda b, step, out: b.retain(step.key),
    "upload": lambda b, step, out: b.uploaded(step.region, step.name),
    # the slot records are in the state tables, and the map says which: nothing to record
    "fence": lambda b, step, out: None,
    "migrate": lambda b, step, out: None,
    "publish": lambda b, step, out: b.published(step.region, step.props["version"]),
    "unpublish": lambda b, step, out: b.unpublished(step.region),
}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ShardkitError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
