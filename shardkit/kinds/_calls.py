"""Call patterns the apply handlers share: delete-if-there, create-or-update, wait-until."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from ..errors import AwsConflictError, AwsNotFoundError, DeployError
from ._spec import Context

__all__ = ["delete_quietly", "upsert", "wait_until"]


def delete_quietly(
    ctx: Context, service: str, region: str, operation: str, resource: str, **params: Any
) -> None:
    """A delete call for which "not found" means done."""
    with contextlib.suppress(AwsNotFoundError):
        ctx.aws.call(service, region, operation, resource=resource, **params)


def upsert(
    ctx: Context, service: str, region: str, create: str, update: str, resource: str, **params: Any
) -> dict[str, Any]:
    """``create``; if the name is taken (ours, from a run that crashed before recording it),
    ``update`` with the same parameters instead."""
    try:
        return ctx.aws.call(service, region, create, resource=resource, **params)
    except AwsConflictError:
        return ctx.aws.call(service, region, update, resource=resource, **params)


def wait_until(what: str, ready: Callable[[], str | None], timeout: float = 300) -> None:
    """Poll ``ready()`` (None when ready, else the current state) until it is, or time out."""
    deadline = time.monotonic() + timeout
    while (state := ready()) is not None:
        if time.monotonic() > deadline:
            raise DeployError(
                f"{what} is still {state} after {timeout:.0f} s",
                hint="run the command again to resume",
            )
        time.sleep(1)
