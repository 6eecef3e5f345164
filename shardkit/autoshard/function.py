"""The auto-shard controller as a scheduled function: what the ``schedule_rule`` invokes.

EventBridge fires at most once a minute and a policy window is typically 10 s, so one tick runs
:meth:`Controller.watch` - a round every shortest ``window_s`` - until the next tick is due
(``SHARDKIT_CONTROL_PERIOD_S``, 60 by default, minus a few seconds), then returns the rounds. The
function has a reserved concurrency of 1: ticks never overlap. Every round is printed as one
JSON line (the function's log group keeps the decisions and their reasons) and recorded in the
decision log, as from a terminal.

It needs the project: its configuration, signing key and deployment state, at
``SHARDKIT_PROJECT_ROOT`` (the blueprint sets it to where the project was deployed from). On the
local cloud (``AWS_EXECUTION_ENV`` is ``shardkit-local``) the function runs on that machine and
deploys to the local cloud; a function that cannot see the project fails with an
:class:`AutoshardError` saying so.
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
    rounds: list[Round] = []
    controller.log = lambda r: (rounds.append(r), print(json.dumps(r.to_dict(), sort_keys=True)))
    controller.watch(until=time.time() + period - _MARGIN_S)
    return {"rounds": [r.to_dict() for r in rounds]}


def _controller(env: dict[str, str]) -> Controller:
    from ..config import load_project
    from ..deploy.engine import Deployer
    from ..deploy.targets import open_target

    root = env.get("SHARDKIT_PROJECT_ROOT", "")
    if not root or not (Path(root) / "shardkit.toml").is_file():
        raise AutoshardError(
            f"SHARDKIT_PROJECT_ROOT = {root!r}: the controller function cannot see the project "
            "(its shardkit.toml, signing key and deployment state)",
            hint="run the controller where the project is: `shardkit autoshard DIR --watch`",
        )
    project = load_project(Path(root))
    local = env.get("AWS_EXECUTION_ENV") == "shardkit-local"
    target = open_target(project, local=local)
    vendor = not local and project.config.proxy.vendor  # as `shardkit deploy` packages it
    return Controller(Deployer(project, target, vendor=vendor))
