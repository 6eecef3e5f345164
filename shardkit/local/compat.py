"""Which moto and botocore the local cloud runs with: the two move together.

moto emulates AWS by hooking into botocore (its request stubber, its service models and parser
internals), so a botocore release moto has not seen can break the local cloud in ways that look
like shardkit bugs. shardkit does not pin everyone's boto3 for that: the core package accepts a
wide boto3/botocore range, and the local cloud checks, when it starts, that moto is installed
(the ``local`` extra) and that the installed pair lies in the ranges this release was tested with.
``constraints.txt`` in the repository holds the exact set CI runs.

The ranges are by minor series: each ceiling is the minor after the newest release tested.
``SHARDKIT_LOCAL_ALLOW_UNTESTED=1`` lets a user try another pair on purpose.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from ..errors import LocalCloudError

__all__ = ["ALLOW_UNTESTED_ENV", "TESTED", "check", "installed_version", "supported"]

Release = tuple[int, ...]

#: Tested ranges, [floor, ceiling): moto from the oldest release the local cloud's tests ran
#: with; botocore from the core package's floor through the newest release tested with it.
TESTED: dict[str, tuple[Release, Release]] = {
    "moto": ((5, 2, 5), (5, 3)),
    "botocore": ((1, 35, 0), (1, 45)),
}
ALLOW_UNTESTED_ENV = "SHARDKIT_LOCAL_ALLOW_UNTESTED"
INSTALL_HINT = (
    "pip install 'shardkit[local]' (in a checkout: pip install -c constraints.txt -e '.[local]')"
)


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def release(text: str) -> Release:
    """The numeric release of a version string: ``"5.2.5.dev1"`` -> ``(5, 2, 5)``."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def spec(name: str, distribution: str | None = None) -> str:
    """``name>=floor,<ceiling`` for a tested range, as pip takes it (boto3 follows botocore's
    numbers, so ``spec("botocore", "boto3")`` is boto3's matching range)."""
    floor, ceiling = TESTED[name]
    return f"{distribution or name}>={'.'.join(map(str, floor))},<{'.'.join(map(str, ceiling))}"


def supported(name: str, installed: str) -> bool:
    floor, ceiling = TESTED[name]
    return floor <= release(installed) < ceiling


def check(versions: Callable[[str], str | None] | None = None) -> dict[str, str]:
    """The installed ``{"moto": ..., "botocore": ...}``, or LocalCloudError saying what to install.

    moto missing is always an error; a pair outside the tested ranges is one unless
    ``SHARDKIT_LOCAL_ALLOW_UNTESTED=1``. ``versions(name)`` defaults to :func:`installed_version`.
    """
    lookup = versions or installed_version
    found = {name: lookup(name) for name in TESTED}
    if found["moto"] is None:
        raise LocalCloudError(
            f"the local cloud needs moto, which is not installed for {sys.executable}",
            hint=f"install the local cloud: {INSTALL_HINT}",
        )
    if found["botocore"] is None:
        raise LocalCloudError(
            f"botocore is not installed for {sys.executable}", hint=f"reinstall: {INSTALL_HINT}"
        )
    pair = {name: str(v) for name, v in found.items()}
    outside = [name for name, v in pair.items() if not supported(name, v)]
    if outside and os.environ.get(ALLOW_UNTESTED_ENV) != "1":
        raise LocalCloudError(
            f"moto {pair['moto']} with botocore {pair['botocore']} is not a pair the local cloud "
            f"is tested with ({spec('moto')}, {spec('botocore')}; outside: {', '.join(outside)}); "
            "moto patches botocore internals, so an untested pair can fail in confusing ways",
            hint=f"install a tested pair: pip install '{spec('moto')}' '{spec('botocore')}' "
            f"'{spec('botocore', 'boto3')}', or the tested set: "
            f"pip install -c constraints.txt -e '.[local]' in a checkout; "
            f"set {ALLOW_UNTESTED_ENV}=1 to try this pair anyway",
        )
    return pair
