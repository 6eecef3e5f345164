"""Deploy, status, destroy and rollback: the stages put together.

``config -> map (signed) -> code package -> blueprint -> plan (pure) -> executor``. Each command is
a different desired state planned against the same deployed manifest: deploy wants the project as
configured, destroy wants nothing, rollback wants the previous deployment, and a local-cloud
restore wants the current deployment on a fresh, empty server.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import kinds
from .._files import write_bytes_atomic
from ..aws.facade import Aws
from ..blueprint.definition import DEFAULT_BLUEPRINT, CodeArtifact, expand, load_definition
from ..blueprint.model import Blueprint
from ..config.build import build_map, rebase_map, same_routing, signing_key_for
from ..config.loader import Project
from ..errors import DeployError, MapError, PlanFileError
from ..keys import format_trusted_keys, load_trusted_keys
from ..migrate.deploy import slot_batches
from ..sharding.codec import decode_map, encode_map
from ..sharding.shardmap import ShardMap
from .executor import ApplyResult, Executor, Progress
from .package import build_package
from .plan import Plan, make_plan
from .state import Manifest, StateStore

__all__ = ["Deployer", "Target"]

# Republish an unchanged map once less than this share of its lifetime is left.
_REFRESH_FRACTION = 0.5


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
        vendor: bool = False,
    ) -> None:
        """``vendor``: put the data plane's dependency wheels in the code package (what real
        AWS needs; the local cloud runs functions with this machine's packages)."""
        self.project = project
        self.target = target
        self.store = StateStore(project.state_dir, target.name)
        self.progress = progress
        self.vendor = vendor
        # The last map built, by what it was built from: a long-lived deployer (`shardkit dev`)
        # re-plans after every save, and a code change leaves the map's inputs as they were.
        self._built: tuple[tuple[Any, ...], ShardMap] | None = None

    # -- reading ---------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        return self.store.load_manifest(self.project.config.project.name)

    def deployed_map(self) -> ShardMap | None:
        data = self.store.load_map_bytes()
        if data is None:
            return None
        trusted = load_trusted_keys(self.project.keys_dir)
        try:
            return decode_map(data, trusted, now=float("-inf"))
        except MapError as exc:
            raise DeployError(
                f"the deployed map {self.store.map_path} cannot be read: {exc.message}",
                hint=exc.hint,
            ) from None

    def needs_restore(self) -> bool:
        """The local cloud restarted since the last apply: what is recorded is not there."""
        m = self.manifest()
        return (
            self.target.name == "local"
            and bool(m.resources)
            and m.local_instance != self.target.instance
        )

    # -- planning --------------------------------------------------------------------------

    def plan(self, *, refresh: bool = False) -> Plan:
        """Plan the project as configured. ``refresh`` first checks (read-only) that what the
        manifest records still exists, and plans to re-create whatever was deleted behind
        shardkit's back."""
        manifest = self.manifest()
        _check_layout(manifest)
        deployed = self.deployed_map()
        shard_map, envelope = self._next_map(deployed, manifest)
        package = build_package(self.project, self._dependencies())
        self._cache_artifact(package.sha256, package.data)
        blueprint = self._blueprint(shard_map, package.artifact)
        base = manifest.fingerprint()
        if refresh:
            for key in self._missing(manifest):
                manifest.resources.pop(key)
        plan = make_plan(
            blueprint,
            manifest,
            project_root=str(self.project.root),
            artifact=_artifact_dict(package.artifact),
            map_envelope=envelope,
            map_version=shard_map.version,
            slots=slot_batches(deployed, shard_map, _fresh_tables(blueprint, manifest)),
        )
        return replace(plan, base=base)  # what is recorded is still what the plan replaces

    def _dependencies(self) -> dict[str, bytes] | None:
        if not self.vendor:
            return None
        from .vendor import fetch_wheels, wheel_files

        function = load_definition(self.project.config.proxy.blueprint)
        props = next(
            item["props"] for item in function["shard"] if item["kind"] == "lambda_function"
        )
        return wheel_files(fetch_wheels(props["runtime"], props["architecture"]))

    def _missing(self, manifest: Manifest) -> list[str]:
        """Recorded resources that are gone (each kind's probe: one read call each)."""
        return sorted(
            key
            for key, rec in manifest.resources.items()
            if not rec.get("retained") and not self._exists(rec)
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
        manifest = self.manifest()
        plan = make_plan(
            foundation,
            manifest,
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
        return replace(plan, steps=steps, deployment=manifest.deployment)

    def plan_destroy(self, *, delete_data: bool = False) -> Plan:
        empty = Blueprint(self.project.config.project.name, DEFAULT_BLUEPRINT, self.target.account)
        return make_plan(
            empty,
            self.manifest(),
            project_root=str(self.project.root),
            artifact=None,
            map_envelope=None,
            map_version=0,
            delete_data=delete_data,
            kind="destroy",
        )

    def plan_rollback(self) -> Plan:
        """Back to the deployment before the current one, as a new, higher map version."""
        manifest = self.manifest()
        _check_layout(manifest)
        earlier = [n for n in self.store.deployments() if n < manifest.deployment]
        if not earlier:
            raise DeployError(
                "there is no earlier successful deployment to roll back to",
                hint="`shardkit status` shows the deployment history",
            )
        record = self.store.load_deployment(earlier[-1])
        blueprint = Blueprint.from_dict(record["blueprint"])
        current = self.deployed_map()
        envelope, version, slots = None, manifest.map_version, []
        if record["map"] and current is not None:
            old = decode_map(
                record["map"], load_trusted_keys(self.project.keys_dir), now=float("-inf")
            )
            shard_map = rebase_map(old, current, ttl_s=self._ttl())
            envelope, version = self._sign(shard_map), shard_map.version
            slots = slot_batches(current, shard_map, _fresh_tables(blueprint, manifest))
        artifact = _blueprint_artifact(blueprint)
        return make_plan(
            blueprint,
            manifest,
            project_root=str(self.project.root),
            artifact=artifact,
            map_envelope=envelope,
            map_version=version,
            slots=slots,
            kind="rollback",
        )

    def plan_restore(self) -> Plan:
        """Everything of the current deployment, onto a fresh (restarted) local cloud."""
        manifest = self.manifest()
        _check_layout(manifest)
        record = self.store.load_deployment(manifest.deployment)
        blueprint = Blueprint.from_dict(record["blueprint"])
        current = self.deployed_map()
        empty = Manifest(
            project=manifest.project, target=manifest.target, deployment=manifest.deployment - 1
        )
        plan = make_plan(
            blueprint,
            empty,
            project_root=str(self.project.root),
            artifact=_blueprint_artifact(blueprint),
            map_envelope=record["map"] or None,
            map_version=manifest.map_version,
            slots=slot_batches(None, current) if current is not None else (),
            kind="restore",
        )
        # A restore re-creates the same deployment, so it is based on the manifest as it stands.
        return replace(plan, base=manifest.fingerprint(), deployment=manifest.deployment)

    # -- applying --------------------------------------------------------------------------

    def apply(self, plan: Plan) -> ApplyResult:
        self._check_plan(plan)
        data = self._load_artifact(plan.artifact) if _uploads(plan) else None
        executor = Executor(
            self.target.aws, self.store, partition=self.target.partition, progress=self.progress
        )
        return executor.apply(plan, artifact_data=data, local_instance=self.target.instance)

    def status(self) -> dict[str, Any]:
        """What is recorded, checked against what exists (read-only calls)."""
        manifest = self.manifest()
        missing = self._missing(manifest)
        return {
            "project": manifest.project,
            "target": self.target.name,
            "account": manifest.account,
            "status": manifest.status,
            "deployment": manifest.deployment,
            "map_version": manifest.map_version,
            "regions": sorted({r["region"] for r in manifest.resources.values()}),
            "resources": len(manifest.resources),
            "missing": sorted(missing),
            "retained": sorted(k for k, r in manifest.resources.items() if r.get("retained")),
            "pending_applies": self.store.pending_journals(),
            "shards": self.outputs(manifest)["shards"],
        }

    def outputs(self, manifest: Manifest | None = None) -> dict[str, Any]:
        """Function URLs per shard, tables and buckets per region: what callers need."""
        manifest = manifest or self.manifest()
        shards: dict[str, dict[str, Any]] = {}
        regions: dict[str, dict[str, str]] = {}
        for rec in manifest.resources.values():
            fields = kinds.get(rec["kind"]).summary(rec["name"], rec.get("outputs", {}))
            if rec.get("shard"):
                shards.setdefault(rec["shard"], {"region": rec["region"]}).update(fields)
            elif fields:
                regions.setdefault(rec["region"], {}).update(fields)
        return {
            "project": manifest.project,
            "target": manifest.target,
            "map_version": manifest.map_version,
            "deployment": manifest.deployment,
            "regions": dict(sorted(regions.items())),
            "shards": dict(sorted(shards.items())),
        }

    # -- helpers ---------------------------------------------------------------------------

    def _next_map(
        self, deployed: ShardMap | None, manifest: Manifest
    ) -> tuple[ShardMap, bytes | None]:
        """The map to deploy; ``None`` bytes when the deployed one still serves as it is."""
        config = self.project.config
        floor = max(self._local_map_version(), manifest.map_version_max)
        inputs = (config, deployed.version if deployed else None, floor)
        if self._built is not None and self._built[0] == inputs:
            candidate = self._built[1]
        else:
            candidate = build_map(config, deployed, min_version=floor + 1)
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
        definition = load_definition(self.project.config.proxy.blueprint)
        keys = format_trusted_keys(self.project.keys_dir)
        return expand(
            definition,
            config=self.project.config,
            shard_map=shard_map,
            account=self.target.account,
            code=artifact,
            partition=self.target.partition,
            trusted_keys=keys,
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

    def _cache_artifact(self, sha256: str, data: bytes) -> None:
        path = self.project.state_dir / "artifacts" / f"{sha256}.zip"
        if not path.exists():
            write_bytes_atomic(path, data)

    def _load_artifact(self, artifact: dict[str, str] | None) -> bytes:
        if artifact is None:
            raise PlanFileError("the plan uploads code but names no code package")
        path = self.project.state_dir / "artifacts" / f"{artifact['sha256']}.zip"
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

    def _exists(self, rec: dict[str, Any]) -> bool:
        kind = kinds.get(rec["kind"])
        return kind.exists(self.target.aws, rec["region"], rec["name"], rec["props"])


def _fresh_tables(blueprint: Blueprint, manifest: Manifest) -> set[str]:
    """Regions whose state table the plan creates: empty, so their slots' records are new."""
    return {
        r.region for r in blueprint.of_kind("dynamodb_table") if r.key not in manifest.resources
    }


def _check_layout(manifest: Manifest) -> None:
    """A deployment made before state was addressed by slot keeps per-shard epoch records and
    ``{shard}#{key}`` items; deploying over it would mix the two layouts."""
    if manifest.epochs:
        raise DeployError(
            f"deployment {manifest.deployment} of {manifest.project} keeps its state in the old "
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
