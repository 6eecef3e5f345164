"""The executor: the only code that changes AWS.

It applies a :class:`Plan` step by step under the project's lock:

1. the plan's ``base`` must be the fingerprint of the deployed manifest - or, when this same plan
   failed earlier, the fingerprint of the manifest that failure left behind (a resume);
2. regions run in parallel, steps within a region in plan order (dependencies first);
3. every completed step is appended to the plan's journal before the next starts;
4. on failure, the manifest is replaced by one that records exactly the completed steps and the
   error is raised; running the same plan again skips what the journal says is done;
5. on success, the manifest, the published map and a deployment record are written and the
   journal is removed.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import kinds
from ..aws.facade import Aws
from ..errors import ApplyFailedError, PlanStaleError, ShardkitError
from ..kinds import Context
from .fence import slot_records
from .plan import Plan, Step
from .state import Manifest, StateStore

__all__ = ["ApplyResult", "Executor"]

Progress = Callable[[Step, str], None]  # (step, "start" | "done" | "skip")


@dataclass
class ApplyResult:
    plan_id: str
    steps_done: int
    steps_skipped: int
    mutating_calls: int
    manifest: Manifest
    resumed: bool = False
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


class Executor:
    def __init__(
        self,
        aws: Aws,
        store: StateStore,
        *,
        partition: str = "aws",
        progress: Progress | None = None,
    ) -> None:
        self.aws = aws
        self.store = store
        self.partition = partition
        self.progress = progress or (lambda step, event: None)

    def apply(
        self, plan: Plan, *, artifact_data: bytes | None = None, local_instance: str = ""
    ) -> ApplyResult:
        with self.store.lock():
            manifest = self.store.load_manifest(plan.project)
            done = self.store.read_journal(plan.plan_id)
            skipped = len(done)
            resumed = bool(done)
            if plan.is_noop and plan.base == manifest.fingerprint():
                return ApplyResult(plan.plan_id, 0, 0, 0, manifest)  # nothing to do or record
            if plan.base != manifest.fingerprint() and not (
                resumed and manifest.status == "failed"
            ):
                raise PlanStaleError(
                    f"the plan was made against deployed state {plan.base}, but the deployed "
                    f"state is now {manifest.fingerprint()} (deployment {manifest.deployment})"
                )
            if not resumed:
                self._supersede_unfinished()
            ctx = Context(self.aws, plan.account, self.partition, artifact_data, plan.map_envelope)
            before = self.aws.mutating_calls
            errors = self._run(plan, done, ctx)
            _apply_to_manifest(manifest, plan, done)
            manifest.local_instance = local_instance or manifest.local_instance
            if errors:
                manifest.status = "failed"
                self.store.save_manifest(manifest)
                step, exc = errors[0]
                raise ApplyFailedError(
                    f"step {step.id} ({step.action} {step.kind} {step.name} in {step.region}) "
                    f"failed: {_describe(exc)}; {len(done)} of {len(plan.steps)} steps are done "
                    f"and recorded"
                ) from exc
            self._finish(plan, manifest)
            return ApplyResult(
                plan.plan_id,
                len(done) - skipped,
                skipped,
                self.aws.mutating_calls - before,
                manifest,
                resumed,
                {k: v.get("outputs", {}) for k, v in manifest.resources.items()},
            )

    def _supersede_unfinished(self) -> None:
        """A plan applied afresh changes the state any unfinished apply was based on, so those
        can no longer resume: their journals go (applying one again is then a stale plan)."""
        for plan_id in self.store.pending_journals():
            self.store.finish_journal(plan_id)

    def _run(
        self, plan: Plan, done: dict[int, dict[str, Any]], ctx: Context
    ) -> list[tuple[Step, BaseException]]:
        by_region: dict[str, list[Step]] = {}
        for step in plan.steps:
            by_region.setdefault(step.region, []).append(step)
        errors: list[tuple[Step, BaseException]] = []
        stop = threading.Event()
        lock = threading.Lock()
        with self.store.journal(plan.plan_id) as record:

            def run_region(steps: list[Step]) -> None:
                for step in steps:
                    if step.id in done:
                        self.progress(step, "skip")
                        continue
                    if stop.is_set():
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
                        record(step.id, outputs)
                        done[step.id] = outputs
                    self.progress(step, "done")

            with ThreadPoolExecutor(max_workers=max(1, min(8, len(by_region)))) as pool:
                list(pool.map(run_region, by_region.values()))
        return errors

    def _step(self, step: Step, ctx: Context) -> dict[str, Any]:
        if step.action == "retain":
            return {}
        if step.action == "upload":
            self._put(step, ctx.artifact_data, "application/zip")
            return {}
        if step.action == "publish":
            out = self._put(step, ctx.map_envelope, "application/vnd.shardkit.map")
            return {"version_id": out.get("VersionId", "")}
        if step.action == "fence":
            return slot_records(self.aws, step.region, step.props)
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

    def _finish(self, plan: Plan, manifest: Manifest) -> None:
        manifest.status = "ok"
        if plan.kind == "bootstrap":  # the foundation only: not a deployment to roll back to
            self.store.save_manifest(manifest)
            self.store.finish_journal(plan.plan_id)
            return
        if plan.map_envelope is not None:
            self.store.save_map_bytes(plan.map_envelope)
        manifest.deployment = plan.deployment
        self.store.save_manifest(manifest)
        map_bytes = plan.map_envelope or self.store.load_map_bytes() or b""
        self.store.record_deployment(plan.deployment, plan.blueprint, map_bytes)
        self.store.finish_journal(plan.plan_id)


def _apply_to_manifest(manifest: Manifest, plan: Plan, done: dict[int, dict[str, Any]]) -> None:
    """Record exactly the completed steps - the truth about what now exists."""
    for step in plan.steps:
        if step.id in done:
            _RECORD[step.action](manifest, step, done[step.id])
    published = [s for s in plan.steps if s.action == "publish"]
    if published and all(s.id in done for s in published):
        manifest.map_version = plan.map_version
        manifest.map_sha256 = hashlib.sha256(plan.map_envelope or b"").hexdigest()
    # An artifact, a published map or an epoch record is only as present as what holds it.
    buckets = {r["region"] for r in manifest.resources.values() if r["kind"] == "s3_bucket"}
    manifest.artifacts = {r: k for r, k in manifest.artifacts.items() if r in buckets}
    manifest.map_regions = sorted(r for r in manifest.map_regions if r in buckets)
    shards = {r["shard"] for r in manifest.resources.values() if r["kind"] == "lambda_function"}
    manifest.epochs = {s: e for s, e in manifest.epochs.items() if s in shards}
    manifest.account = plan.account


def _record_resource(manifest: Manifest, step: Step, outputs: dict[str, Any]) -> None:
    manifest.resources[step.key] = {
        "kind": step.kind,
        "name": step.name,
        "region": step.region,
        "shard": step.shard,
        "fingerprint": step.fingerprint,
        "props": step.props,
        "outputs": outputs,
    }


def _record_delete(manifest: Manifest, step: Step, outputs: dict[str, Any]) -> None:
    manifest.resources.pop(step.key, None)


def _record_retain(manifest: Manifest, step: Step, outputs: dict[str, Any]) -> None:
    manifest.resources[step.key] = {**manifest.resources[step.key], "retained": True}


def _record_upload(manifest: Manifest, step: Step, outputs: dict[str, Any]) -> None:
    keys = manifest.artifacts.setdefault(step.region, [])
    if step.name not in keys:
        keys.append(step.name)


def _record_fence(manifest: Manifest, step: Step, outputs: dict[str, Any]) -> None:
    """Nothing to record: the slot records are in the state tables, and the map says which."""


def _record_publish(manifest: Manifest, step: Step, outputs: dict[str, Any]) -> None:
    manifest.map_version_max = max(manifest.map_version_max, step.props["version"])
    if step.region not in manifest.map_regions:
        manifest.map_regions.append(step.region)


_RECORD = {
    "create": _record_resource,
    "update": _record_resource,
    "delete": _record_delete,
    "retain": _record_retain,
    "upload": _record_upload,
    "fence": _record_fence,
    "publish": _record_publish,
}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ShardkitError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
