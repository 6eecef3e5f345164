"""The auto-shard controller as a scheduled function: what the ``schedule_rule`` invokes.

EventBridge fires at most once a minute and a policy window is typically 10 s, so one tick runs
:meth:`Controller.watch` - a round every shortest ``window_s`` - until the next tick is due
(``SHARDKIT_CONTROL_PERIOD_S``, 60 by default, or the invocation's remaining time if less, minus
a few seconds), then returns the rounds. The
function has a reserved concurrency of 1: ticks never overlap. Every round is printed as one
JSON line (the function's log group keeps the decisions and their reasons) and recorded in the
decision log, as from a terminal.

Where the project comes from:

* **on AWS** the function carries it: its code package holds the configuration and code, and
  the signing key is in the secret ``SHARDKIT_SIGNING_SECRET`` names (:mod:`.carried` makes the
  project in ``/tmp`` on a cold start and checks it). The controller deploys with the package
  it runs from: the vendored dependencies are those of its task root, never fetched again;
* **on the local cloud** (``AWS_EXECUTION_ENV`` is ``shardkit-local``) the function runs beside
  the project, at ``SHARDKIT_PROJECT_ROOT``: the local cloud itself (its endpoint, instance and
  the gateway's routes) lives in that directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import AutoshardError
from .controller import Controller, Round

__all__ = ["handler"]

_MARGIN_S = 5.0  # stop this long before the next tick is due


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Run rounds until the next tick; returns ``{"rounds": [...]}`` (each round as a dict)."""
    controller = _controller(dict(os.environ))
    period = float(os.environ.get("SHARDKIT_CONTROL_PERIOD_S", "60"))
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is not None:  # never run into the function's timeout
        period = min(period, remaining() / 1000)
    rounds: list[Round] = []
    controller.log = lambda r: (rounds.append(r), print(json.dumps(r.to_dict(), sort_keys=True)))
    controller.watch(until=time.time() + period - _MARGIN_S)
    return {"rounds": [r.to_dict() for r in rounds]}


def _controller(env: dict[str, str]) -> Controller:
    if env.get("AWS_EXECUTION_ENV") == "shardkit-local":
        return _local_controller(env)
    from ..aws.facade import Aws, boto3_factory
    from ..config import load_project
    from ..deploy.engine import Deployer
    from ..deploy.package import installed_dependencies
    from ..deploy.targets import identify
    from .carried import materialise

    if not env.get("LAMBDA_TASK_ROOT"):
        raise AutoshardError(
            "LAMBDA_TASK_ROOT is not set: the controller function runs in Lambda, from its code "
            "package, or on the local cloud",
            hint="run the controller from a terminal instead: `shardkit autoshard DIR --watch`",
        )
    target = identify(Aws(boto3_factory(), target="aws"), "aws")
    task_root = Path(env["LAMBDA_TASK_ROOT"])
    root = materialise(task_root, env.get("SHARDKIT_SIGNING_SECRET", ""), target.aws)
    project = load_project(root)
    vendored = installed_dependencies(task_root, project.config.proxy.code)
    return Controller(Deployer(project, target, dependencies=vendored))


def _local_controller(env: dict[str, str]) -> Controller:
    from ..config import load_project
    from ..deploy.engine import Deployer
    from ..deploy.targets import open_target

    root = env.get("SHARDKIT_PROJECT_ROOT", "")
    if not root or not (Path(root) / "shardkit.toml").is_file():
        raise AutoshardError(
            f"SHARDKIT_PROJECT_ROOT = {root!r}: the local cloud's controller function cannot "
            "see the project (its shardkit.toml, signing key and local cloud)",
            hint="deploy the project to the local cloud again (`shardkit deploy --local`)",
        )
    project = load_project(Path(root))
    return Controller(Deployer(project, open_target(project, local=True)))
