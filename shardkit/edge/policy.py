"""Cache policy as code: which answers an edge node may keep, for how long, and where.

A :class:`CacheRules` is an ordered list of :class:`CachePolicy`, each for a key pattern (an
fnmatch glob such as ``"eu:*"``); the first match wins and a default catches the rest. The default
default caches nothing: an edge node only holds what a policy explicitly allows, so a missing rule
can cost latency but never correctness or residency.

Residency fails closed here too (docs/architecture.md §4.3): a policy's ``resident_only`` names the
jurisdictions whose keys may be cached only by an edge node located in that jurisdiction; the
default, ``"all"``, means every jurisdiction, and a node whose jurisdiction is unknown then caches
nothing at all.

Data-plane module: stdlib only (``fnmatch`` is imported only for patterns that need it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from ..errors import EdgePolicyError

__all__ = [
    "CachePolicy",
    "CacheRules",
    "EdgePolicyError",
    "KeyPattern",
    "Location",
    "payload_field",
]

_GLOB = frozenset("*?[")


class Location:
    """Where this edge node runs. The runtime needs it to apply residency to its cache."""

    __slots__ = ("jurisdiction", "region")

    def __init__(self, region: str | None = None, jurisdiction: str | None = None) -> None:
        self.region = region
        self.jurisdiction = jurisdiction

    def __repr__(self) -> str:
        return f"Location(region={self.region!r}, jurisdiction={self.jurisdiction!r})"


class KeyPattern:
    """A case-sensitive glob over routing keys. ``"*"``, exact keys and plain prefixes
    (``"tenant-a:*"``) are matched without regular expressions: they are the common case and
    the match runs on every request."""

    __slots__ = ("match", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            raise EdgePolicyError(f"key pattern {text!r} must be a non-empty string")
        self.text = text
        self.match: Callable[[str], bool] = _matcher(text)

    def __repr__(self) -> str:
        return f"KeyPattern({self.text!r})"


def _matcher(text: str) -> Callable[[str], bool]:
    if text == "*":
        return lambda key: True
    head = text[:-1]
    if text.endswith("*") and not _GLOB & set(head):
        return lambda key: key.startswith(head)
    if not _GLOB & set(text):
        return text.__eq__
    import fnmatch
    import re

    compiled = re.compile(fnmatch.translate(text))
    return lambda key: compiled.match(key) is not None


class CachePolicy:
    """How answers for keys matching ``pattern`` may be cached at the edge.

    * ``ttl_s``: an entry is fresh (a ``hit``) for this long after it was filled.
    * ``max_stale_s``: after that it may still be served (``stale``) for this long while one
      background request revalidates it - bounded stale-while-revalidate, never unbounded.
    * ``stale_if_error_s``: after ``ttl_s``, an entry may answer for this long when the shard
      fails (no answer, 5xx, all shards of the jurisdiction down); beyond it the error stands.
    * ``max_entry_bytes``: a larger answer is not cached.
    * ``cacheable(payload)``: which payloads may be cached (e.g. read-only ones); None = all.
    * ``resident_only``: jurisdictions whose keys are cached only on a node inside them
      (``"all"``, the default, is every jurisdiction).
    * ``invalidate_on_bypass``: a request for the key that is not cacheable (typically a write)
      drops the key's cached entries, since it may change the answers.
    """

    __slots__ = (
        "cacheable",
        "invalidate_on_bypass",
        "max_entry_bytes",
        "max_stale_s",
        "pattern",
        "resident_only",
        "stale_if_error_s",
        "ttl_s",
    )

    def __init__(
        self,
        pattern: str = "*",
        *,
        ttl_s: float = 0.0,
        max_stale_s: float = 0.0,
        stale_if_error_s: float = 0.0,
        max_entry_bytes: int = 64 * 1024,
        cacheable: Callable[[Any], bool] | None = None,
        resident_only: Collection[str] | str = "all",
        invalidate_on_bypass: bool = True,
    ) -> None:
        self.pattern = KeyPattern(pattern)
        for name, value in (
            ("ttl_s", ttl_s),
            ("max_stale_s", max_stale_s),
            ("stale_if_error_s", stale_if_error_s),
        ):
            _non_negative(pattern, name, value)
        _non_negative(pattern, "max_entry_bytes", max_entry_bytes)
        self.ttl_s = float(ttl_s)
        self.max_stale_s = float(max_stale_s)
        self.stale_if_error_s = float(stale_if_error_s)
        self.max_entry_bytes = int(max_entry_bytes)
        self.cacheable = cacheable
        self.resident_only = _jurisdictions(pattern, resident_only)
        self.invalidate_on_bypass = invalidate_on_bypass

    @property
    def stores(self) -> bool:
        """Whether this policy keeps anything at all (some window is open)."""
        return (
            self.ttl_s > 0 or self.max_stale_s > 0 or self.stale_if_error_s > 0
        ) and self.max_entry_bytes > 0

    def allows(self, payload: Any, key_jurisdiction: str, location: Location) -> bool:
        """May an answer to ``payload`` for a key of ``key_jurisdiction`` be cached here?"""
        if not self.stores:
            return False
        restricted = self.resident_only is None or key_jurisdiction in self.resident_only
        if restricted and location.jurisdiction != key_jurisdiction:
            return False  # residency fails closed: an unknown location caches nothing
        return self.cacheable is None or bool(self.cacheable(payload))

    def __repr__(self) -> str:
        return (
            f"CachePolicy({self.pattern.text!r}, ttl_s={self.ttl_s}, "
            f"max_stale_s={self.max_stale_s}, stale_if_error_s={self.stale_if_error_s})"
        )


class CacheRules:
    """Policies by key pattern, first match wins; ``default`` (caches nothing) for the rest."""

    __slots__ = ("default", "policies")

    def __init__(
        self, policies: Iterable[CachePolicy] = (), *, default: CachePolicy | None = None
    ) -> None:
        self.policies = tuple(policies)
        for p in self.policies:
            if not isinstance(p, CachePolicy):
                raise EdgePolicyError(f"{p!r} is not a CachePolicy")
        self.default = default if default is not None else CachePolicy("*")

    def policy_for(self, key: str) -> CachePolicy:
        for policy in self.policies:
            if policy.pattern.match(key):
                return policy
        return self.default


def payload_field(name: str, *values: Any) -> Callable[[Any], bool]:
    """A ``cacheable`` predicate: the payload is a dict whose ``name`` equals one of ``values``
    (type included, so ``False`` does not match ``0``). ``payload_field("learn", False)`` is the
    quickstart's read-only test."""
    wanted = tuple((type(v), v) for v in values)

    def check(payload: Any) -> bool:
        if not isinstance(payload, dict) or name not in payload:
            return False
        got = payload[name]
        return (type(got), got) in wanted

    return check


def _non_negative(pattern: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise EdgePolicyError(f"cache policy {pattern!r}: {name} = {value!r} must be a number >= 0")


def _jurisdictions(pattern: str, value: Collection[str] | str) -> frozenset[str] | None:
    if value == "all":
        return None
    if isinstance(value, str) or not all(isinstance(j, str) for j in value):
        raise EdgePolicyError(
            f"cache policy {pattern!r}: resident_only = {value!r} must be "
            "'all' or a collection of jurisdiction names"
        )
    return frozenset(value)
