"""Every error shardkit raises on purpose, in one hierarchy.

    ShardkitError                 root: catch this to catch anything shardkit means to raise
    ├── ConfigError               a project file is invalid (file, field path, value, what is allowed)
    ├── DependencyError           an optional dependency (an extra) is not installed
    ├── EdgePolicyError           an edge runtime's cache policy or setting is invalid
    ├── KeyStoreError             a signing key is missing, unreadable or already exists
    ├── LoadRecordError           a load record (autoshard's signal) is malformed
    ├── AutoshardError            the auto-shard controller cannot run a round
    ├── WorkloadError             a simulator workload spec or trace file is invalid
    ├── PlanningError             a shard map cannot be planned as asked (weights, failure domains)
    ├── RegistryUnreachableError  the map's source (registry, URL, file) could not be read
    ├── MapError                  a shard map could not be had: refused, expired, or none loaded
    │   ├── MapDecodeError        the bytes are not a well-formed shardkit map
    │   ├── MapSignatureError     the signature is wrong or the signing key is not trusted
    │   ├── MapRollbackError      the map is older than the one already held
    │   └── MapExpiredError       the map is past its expiry (a freeze attack or a stale cache)
    ├── RoutingError              a key cannot be routed
    │   ├── ResidencyError        the key's jurisdiction is unknown, ambiguous or has no shards
    │   ├── InvalidKeyError       the key is not a non-empty UTF-8 string of at most 1024 bytes
    │   ├── NoEligibleShardError  every shard allowed for the key is unhealthy
    │   └── InferenceError        the shard answered with an error status
    ├── DeployError               a plan cannot be made or applied
    │   ├── PlanFileError         a plan file is unreadable, edited by hand, or for another project
    │   ├── PlanStaleError        the deployed state changed since the plan was made
    │   ├── ApplyFailedError      a step failed; the journal records what was done
    │   ├── MigrationError        the state tables are not as a migration step expects
    │   │   └── MigrationAbortedError  the SLO guard stopped a migration (error budget exceeded)
    │   ├── StateLockedError      another command holds the deployment's lock
    │   ├── RecordFormatError     a deployment record is unreadable or of a newer format
    │   └── HandlerError          the code package cannot import proxy.handler
    ├── TableWriteError           a conditional write or transaction on a state table was refused
    ├── LocalCloudError           the local cloud is missing, stopped or failed to start
    ├── LogsError                 the proxies' logs cannot be read as asked
    └── AwsError                  an AWS call failed (operation, region and resource in the text)
        ├── AwsThrottledError     still throttled after retries
        ├── AwsAccessDeniedError  credentials missing, expired or not allowed
        ├── AwsConflictError      a concurrent change or a name already taken
        ├── AwsNotFoundError      the resource does not exist
        └── AwsUnreachableError   the endpoint does not answer

Each error carries a ``hint``: one sentence that says what to do about it. The CLI prints
``error: <message> — <hint>`` on one line and exits with code 2.

This module is on the data-plane import path: it imports nothing but the stdlib.
"""

from __future__ import annotations

__all__ = [
    "ApplyFailedError",
    "AutoshardError",
    "AwsAccessDeniedError",
    "AwsConflictError",
    "AwsError",
    "AwsNotFoundError",
    "AwsThrottledError",
    "AwsUnreachableError",
    "ConfigError",
    "DependencyError",
    "DeployError",
    "EdgePolicyError",
    "HandlerError",
    "InferenceError",
    "InvalidKeyError",
    "KeyStoreError",
    "LoadRecordError",
    "LocalCloudError",
    "LogsError",
    "MapDecodeError",
    "MapError",
    "MapExpiredError",
    "MapRollbackError",
    "MapSignatureError",
    "MigrationAbortedError",
    "MigrationError",
    "NoEligibleShardError",
    "PlanFileError",
    "PlanStaleError",
    "PlanningError",
    "RecordFormatError",
    "RegistryUnreachableError",
    "ResidencyError",
    "RoutingError",
    "ShardkitError",
    "StateLockedError",
    "TableWriteError",
    "WorkloadError",
]


class ShardkitError(Exception):
    """Root of every error shardkit raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ShardkitError):
    """A project file is invalid.

    ``file`` is the file, ``problems`` one line per bad field: ``path = value: what is allowed``.
    """

    def __init__(self, file: str, problems: list[str], *, hint: str | None = None) -> None:
        self.file = file
        self.problems = list(problems)
        lines = "; ".join(self.problems)
        super().__init__(f"{file}: {lines}", hint=hint or "fix the field named above and retry")


class DependencyError(ShardkitError):
    """An optional dependency is not installed (the message names it and its extra)."""

    hint = "install the extra named above"


class EdgePolicyError(ShardkitError):
    """An edge cache policy (or the edge runtime's settings) is invalid."""

    hint = "fix the setting named above; docs/edge.md lists every field and its bounds"


class KeyStoreError(ShardkitError):
    """A signing key is missing, unreadable or would be overwritten."""


class LoadRecordError(ShardkitError):
    """A load record (an instance's per-window load signal) is malformed."""

    hint = "the record is damaged or from another tool; docs/autoshard.md gives its format"


class AutoshardError(ShardkitError):
    """The auto-shard controller cannot run a round (nothing deployed, an unreadable log)."""

    hint = "docs/autoshard.md says what the controller needs and how to turn it off"


class WorkloadError(ShardkitError):
    """A simulator workload spec, policy override or trace file is invalid."""

    hint = "docs/autoshard.md lists the workloads, their parameters and the trace formats"


class PlanningError(ShardkitError):
    """The shard map cannot be planned as the configuration asks."""


class RegistryUnreachableError(ShardkitError):
    """The map's source - the registry object in S3, a URL, a file - could not be read, so no
    map was offered. Not a :class:`MapError`: nothing was refused, and the last good map stays
    in force until it expires (offline mode). The message names the source and the failure."""

    hint = (
        "check that the map registry can be reached from here (network, credentials, the "
        "location); until it can, the last good map is used until it expires"
    )


class MapError(ShardkitError):
    """A shard map could not be had: a candidate was refused (the subclasses say why), the map
    held has expired, or none is loaded yet."""


class MapDecodeError(MapError):
    """The bytes are not a well-formed shardkit map."""

    hint = "the file is damaged or not a shardkit map; rebuild it with `shardkit map build`"


class MapSignatureError(MapError):
    """The signature does not verify, or the key that made it is not trusted."""

    hint = "do not use this map; fetch it again from the registry or check the trusted keys"


class MapRollbackError(MapError):
    """The map's version is lower than the version already held."""

    hint = "a map never moves backwards; to undo a change publish a new, higher version"


class MapExpiredError(MapError):
    """The map is past its expiry time."""

    hint = "publish a fresh map (`shardkit deploy` or `shardkit map build`), or raise signing.map_ttl_hours"


class RoutingError(ShardkitError):
    """A key cannot be routed."""


class ResidencyError(RoutingError):
    """The key's jurisdiction is unknown, ambiguous, or has no shards in this map."""


class InvalidKeyError(RoutingError):
    """The key is not a valid key (``shardkit.protocol.check_key`` is the one definition)."""

    hint = "a key is a non-empty UTF-8 string of at most shardkit.protocol.MAX_KEY_BYTES bytes"


class NoEligibleShardError(RoutingError):
    """Every shard allowed for the key (its jurisdiction's) is unhealthy; residency fails closed."""

    hint = "wait for a shard of the key's jurisdiction to recover; keys never leave it"


class InferenceError(RoutingError):
    """The shard answered with an error: ``status``, ``code`` and ``shard`` say which."""

    hint = "see the shard's logs; a 4xx is the request's fault, a 5xx the function's"

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        shard: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.shard = shard


class DeployError(ShardkitError):
    """A plan cannot be made or applied."""


class PlanFileError(DeployError):
    """A plan file is unreadable, was edited by hand, or belongs to another project."""

    hint = "make a fresh plan with `shardkit plan PROJECT_DIR --out plan.json`"


class PlanStaleError(DeployError):
    """The deployed state changed after the plan was made; applying it could undo that change."""

    hint = "make a fresh plan with `shardkit plan PROJECT_DIR --out plan.json` and review it"


class ApplyFailedError(DeployError):
    """A step of an apply failed. Completed steps are recorded; nothing is half-recorded."""

    hint = (
        "fix the cause, then run the same `shardkit apply` (or `shardkit deploy`) again to "
        "resume, or `shardkit rollback` to return to the last good deployment"
    )


class StateLockedError(DeployError):
    """Another command (here or on another machine) holds the deployment's lock."""

    hint = (
        "wait for it to finish (or pass --lock-timeout SECONDS to wait); if its holder died, "
        "break the lock with `shardkit unlock PROJECT_DIR LOCK_ID`"
    )


class RecordFormatError(DeployError):
    """A deployment record is damaged, or was written by a newer shardkit."""

    hint = "upgrade shardkit (`pip install -U shardkit`) to read it"


class HandlerError(DeployError):
    """The configured handler cannot be imported from the code package a deploy would ship."""


class LogsError(ShardkitError):
    """The proxies' logs cannot be read as asked (a bad --since, an unknown shard)."""

    hint = "see `shardkit logs --help`"


class MigrationError(DeployError):
    """A migration step found a slot record (or a state table) that the plan does not expect:
    another migration ran, or the table was changed by hand. Nothing was written for that slot."""

    hint = (
        "run `shardkit status` to see what is deployed; a migration step is safe to run again, "
        "and a stopped migration is undone by aborting it"
    )


class MigrationAbortedError(MigrationError):
    """The SLO guard stopped a migration: the moving shards' error rate exceeded the budget. The
    slots that had not switched were given back to their old owners before this was raised."""

    hint = "fix the failing shards, then deploy again; `shardkit status` shows what moved"


class TableWriteError(ShardkitError):
    """A conditional write, or a transaction, on a state table was refused; nothing was written.

    ``reasons`` has one entry per operation (a single write has one): ``"ConditionalCheckFailed"``
    where the operation's condition did not hold, ``"TransactionConflict"`` where another
    transaction held the item, ``None`` where the operation was fine - or is ``None`` as a whole
    when the table did not say.
    """

    hint = "read the items again and decide; a refused write changed nothing"

    def __init__(
        self,
        message: str,
        *,
        reasons: tuple[str | None, ...] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.reasons = reasons

    def failed(self, index: int) -> bool | None:
        """Whether operation ``index``'s condition failed; None when the table did not say."""
        if self.reasons is None:
            return None
        return index < len(self.reasons) and self.reasons[index] == CONDITION_FAILED


#: The reason a refused operation gives when its condition did not hold.
CONDITION_FAILED = "ConditionalCheckFailed"


class LocalCloudError(ShardkitError):
    """The local cloud is missing, stopped, or failed to start."""

    hint = "start it with `shardkit local up PROJECT_DIR`"


class AwsError(ShardkitError):
    """An AWS call failed. The message names the operation, region and resource."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        code: str = "",
        operation: str = "",
        region: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.operation = operation
        self.region = region


class AwsThrottledError(AwsError):
    """AWS kept throttling after the retry budget was spent."""

    hint = "AWS is throttling this account; wait a minute and run the command again (it resumes)"


class AwsAccessDeniedError(AwsError):
    """Credentials are missing, expired, or lack a permission."""

    hint = "check the AWS credentials and that they allow the operation named above"


class AwsConflictError(AwsError):
    """A concurrent change is in progress, or a name is already taken."""

    hint = "another change may be in progress; wait and run the command again"


class AwsNotFoundError(AwsError):
    """The resource does not exist."""

    hint = "run `shardkit status` to compare what is recorded with what exists"


class AwsUnreachableError(AwsError):
    """The endpoint did not answer."""

    hint = "check the network or, for the local cloud, run `shardkit local up PROJECT_DIR`"
