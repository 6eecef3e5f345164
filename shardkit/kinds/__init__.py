"""Resource kinds: one module per kind, each the single home of everything about that kind.

``shardkit/kinds/<kind>.py`` defines one :class:`KindSpec` subclass: typed properties, the apply
handler, the existence probe, the CloudFormation rendering, references to other kinds, the name
limit and the retain and bootstrap flags. The blueprint (kind check, dependencies, name limits,
property validation), the CloudFormation renderer, the planner (apply order, retained kinds), the
executor and the deploy engine (probes, bootstrap, outputs) all ask this registry; none keeps a
table of kinds. Adding a kind is adding its module (and using it in a blueprint definition).

    from shardkit import kinds
    kinds.names()                    # every kind, in apply order (derived from the references)
    kinds.get("s3_bucket").retain    # False
"""

from ._reference import markdown, reference
from ._registry import discover, get, names, problems, rank, specs
from ._spec import Context, KindSpec, Probe, Props, Ref, RenderContext, Rendered

__all__ = [
    "Context",
    "KindSpec",
    "Probe",
    "Props",
    "Ref",
    "RenderContext",
    "Rendered",
    "discover",
    "get",
    "markdown",
    "names",
    "problems",
    "rank",
    "reference",
    "specs",
]
