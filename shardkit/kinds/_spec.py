"""The contract of a resource kind: everything shardkit knows about one kind, in one class.

A kind is one :class:`KindSpec` subclass in its own module of :mod:`shardkit.kinds`. It owns

* ``props``: a frozen pydantic model that forbids unknown fields. It is the only reader of a
  resource's properties - apply and render both get the typed model, so their defaults cannot
  differ - and it checks them when a blueprint is expanded, before any AWS call;
* ``refs``: which property names which other kind. They give the blueprint's dependencies, the
  apply order of kinds (derived, see :mod:`shardkit.kinds._registry`) and CloudFormation refs;
* the apply handler (``create``/``update``/``delete``; creation adopts a resource of our name),
  and ``probe``, the read call that says whether the resource still exists;
* the CloudFormation view: ``cfn_type``, ``cfn_prefix`` of its logical ids, ``render`` (one or
  more resource bodies) and ``outputs``;
* ``name_limit`` (AWS's limit on the physical name), ``retain`` (kept on destroy unless the data
  is deleted too) and ``bootstrap`` (part of the per-region foundation).

Resource properties stay the raw (filled-in) mapping in the blueprint, so fingerprints and saved
plans do not change with the models; every use parses them with :meth:`KindSpec.typed`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import AwsNotFoundError, ConfigError

if TYPE_CHECKING:
    from ..aws.facade import Aws
    from ..blueprint.model import Resource

__all__ = [
    "RETAIN",
    "Context",
    "KindSpec",
    "Probe",
    "Props",
    "Ref",
    "RenderContext",
    "Rendered",
    "camel",
    "problems_of",
]

#: (logical id, resource body) pairs of one blueprint resource.
Rendered = Iterator[tuple[str, dict[str, Any]]]

#: A CloudFormation resource's policies to keep it when its stack deletes or replaces it.
RETAIN = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}


class Props(BaseModel):
    """Base of every kind's properties: immutable, and an unknown property is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=Props)


@dataclass(frozen=True)
class Ref:
    """A property that names another resource of the blueprint, in the same region.

    ``name`` makes the other resource's name from the properties (``"{function}:{qualifier}"``);
    by default it is the property's value. A ``required=False`` reference may also name a
    resource outside the blueprint (a function's code bucket).
    """

    prop: str  # dotted path into the properties: "role", "code.bucket"
    kind: str
    name: str = ""
    required: bool = True

    def value(self, props: Mapping[str, Any]) -> Any:
        """The property's value in the (raw) properties; None when unset."""
        value: Any = props
        for part in self.prop.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    def target(self, props: Mapping[str, Any]) -> str | None:
        """The name of the resource ``props`` refer to; None when the property is unset."""
        value = self.value(props)
        if value in (None, ""):
            return None
        if not self.name:
            return str(value)
        try:
            return self.name.format_map(props)
        except (KeyError, IndexError):
            return None


@dataclass(frozen=True)
class Probe:
    """The read call that tells whether a resource exists: "not found" means it does not, and
    ``found`` inspects the answer of list-style calls that never say "not found"."""

    service: str
    operation: str
    params: Mapping[str, Any]
    found: Callable[[Mapping[str, Any]], bool] | None = None


@dataclass(frozen=True)
class Context:
    """What an apply handler needs besides the resource: the facade, account and payloads
    (never recorded: the code package, the map, secret values)."""

    aws: Aws
    account: str
    partition: str
    artifact_data: bytes | None = None
    map_envelope: bytes | None = None
    secrets: Mapping[str, bytes] = field(default_factory=dict)  # a secret kind's ``value_from``


class RenderContext(Protocol):
    """What a renderer may ask about the template it renders into (one region)."""

    region: str
    resources: Sequence[Resource]

    def id(self, r: Resource) -> str:
        """The logical id of ``r``."""

    def ref_id(self, r: Resource, prop: str) -> str:
        """The logical id of the resource ``r``'s reference ``prop`` names; an error if none."""

    def find_id(self, r: Resource, prop: str) -> str | None:
        """Like :meth:`ref_id`, but None if the named resource is not in the template."""

    def tags(self, r: Resource) -> list[dict[str, str]]:
        """The CloudFormation tags of ``r``."""

    def error(self, r: Resource, problem: str, *, hint: str | None = None) -> ConfigError:
        """A rendering error that names the blueprint and ``r``."""


class KindSpec(ABC, Generic[P]):
    """One resource kind. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]  # the kind, as blueprint definitions spell it: "s3_bucket"
    props: ClassVar[type[Props]]
    cfn_type: ClassVar[str]  # its main CloudFormation resource type
    cfn_prefix: ClassVar[str]  # logical ids are this, the shard id in CamelCase, a suffix
    name_limit: ClassVar[int | None]  # None: named after another resource, checked there
    refs: ClassVar[tuple[Ref, ...]] = ()
    retain: ClassVar[bool] = False  # kept on destroy unless --delete-data: holds user data
    bootstrap: ClassVar[bool] = False  # created by `shardkit bootstrap`

    # -- apply -----------------------------------------------------------------------------

    @abstractmethod
    def create(self, ctx: Context, region: str, name: str, props: P) -> dict[str, Any]:
        """Make the resource (or adopt the one of that name) and return its outputs."""

    def update(self, ctx: Context, region: str, name: str, props: P) -> dict[str, Any]:
        """Bring the resource to ``props``; by default ``create``, for upserting calls."""
        return self.create(ctx, region, name, props)

    @abstractmethod
    def delete(self, ctx: Context, region: str, name: str, props: P) -> None:
        """Remove the resource; one that is already gone is not an error."""

    @abstractmethod
    def probe(self, name: str, props: P) -> Probe:
        """The read call that finds the resource."""

    # -- CloudFormation --------------------------------------------------------------------

    @abstractmethod
    def render(self, r: Resource, props: P, ctx: RenderContext) -> Rendered:
        """The resource's CloudFormation bodies; property strings are wrapped in ``Fn::Sub``
        by the caller where they name a pseudo parameter."""

    def outputs(self, r: Resource, props: P, lid: str) -> dict[str, Any]:
        """Template outputs for the resource rendered as ``lid``."""
        return {}

    def logical_suffix(self, r: Resource, props: P) -> str:
        """What tells apart several resources of this kind in one shard."""
        return ""

    # -- the deployment's outputs ----------------------------------------------------------

    def summary(self, name: str, outputs: Mapping[str, Any]) -> dict[str, str]:
        """What callers need to know of a deployed resource, for its region's or its shard's
        entry of ``Deployer.outputs()``."""
        return {}

    def name_problem(self, name: str, props: P) -> str | None:
        """Why ``name`` cannot be this resource's name, beyond its length; None if it can."""
        return None

    # -- called by the blueprint, the planner and the executor -------------------------------

    def typed(
        self, props: Mapping[str, Any], *, name: str, region: str, source: str = "blueprint"
    ) -> P:
        """The typed properties, or a :class:`ConfigError` naming ``source``, the resource and
        every bad property path."""
        try:
            return self.props.model_validate(props)  # type: ignore[return-value]
        except ValidationError as exc:
            where = f"{self.name} {name!r} in {region}"
            raise ConfigError(
                source,
                [f"{where}: {line}" for line in _problems(exc)],
                hint="fix the property in the blueprint definition; `shardkit blueprint kinds` "
                "lists each kind's properties",
            ) from None

    def apply(
        self, action: str, ctx: Context, region: str, name: str, props: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run a plan step's ``action`` (create, update or delete) on this resource."""
        typed = self.typed(props, name=name, region=region, source="plan step")
        if action == "delete":
            self.delete(ctx, region, name, typed)
            return {}
        method = self.create if action == "create" else self.update
        return method(ctx, region, name, typed)

    def exists(self, aws: Aws, region: str, name: str, props: Mapping[str, Any]) -> bool:
        """Whether the resource exists (one read call)."""
        probe = self.probe(name, self.typed(props, name=name, region=region, source="manifest"))
        try:
            answer = aws.call(probe.service, region, probe.operation, resource=name, **probe.params)
        except AwsNotFoundError:
            return False
        return probe.found(answer) if probe.found else True

    def references(self, props: Mapping[str, Any]) -> list[tuple[Ref, str]]:
        """``(ref, name)`` of each resource the (raw) properties name."""
        return [(ref, target) for ref in self.refs if (target := ref.target(props))]


def camel(text: str) -> str:
    """``eu-0`` -> ``Eu0``: a logical-id part."""
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", text) if p)


def _problems(exc: ValidationError) -> list[str]:
    """One line per bad property: ``props.path = value: what is wrong``."""
    lines = []
    for err in exc.errors():
        path = ".".join(["props", *(str(p) for p in err["loc"])])
        if err["type"] == "value_error":
            msg = str(err["ctx"]["error"])
        else:
            msg = err["msg"][:1].lower() + err["msg"][1:]
        if err["type"] == "missing":
            lines.append(f"{path}: required, missing")
        else:
            lines.append(f"{path} = {err['input']!r}: {msg}")
    return lines


#: Each method a kind must implement, and the part of the kind it is.
_PARTS = {
    "create": "apply handler (create)",
    "delete": "apply handler (delete)",
    "probe": "existence probe (probe)",
    "render": "CloudFormation renderer (render)",
}
_ATTRIBUTES = {
    "name": "name",
    "props": "typed properties (props)",
    "cfn_type": "CloudFormation type (cfn_type)",
    "cfn_prefix": "logical-id prefix (cfn_prefix)",
    "name_limit": "name length limit (name_limit, None if named after another resource)",
}


def problems_of(cls: type[KindSpec[Any]]) -> list[str]:
    """What ``cls`` lacks to be a complete kind, one line per missing part."""
    label = getattr(cls, "name", cls.__name__)
    out = [f"{label}: no {part}" for attr, part in _ATTRIBUTES.items() if not hasattr(cls, attr)]
    out += [
        f"{label}: no {part}"
        for method, part in _PARTS.items()
        if method in getattr(cls, "__abstractmethods__", ())
    ]
    props = getattr(cls, "props", None)
    if props is not None and not (
        isinstance(props, type)
        and issubclass(props, Props)
        and props.model_config.get("frozen")
        and props.model_config.get("extra") == "forbid"
    ):
        out.append(f"{label}: props must be a frozen Props model that forbids unknown fields")
    for ref in getattr(cls, "refs", ()):
        if props is not None and ref.prop.split(".")[0] not in props.model_fields:
            out.append(f"{label}: ref {ref.prop!r} is not one of its properties")
    return out
