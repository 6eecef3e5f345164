"""What the remote deployment record costs an apply: calls and time, on moto, in-process.

For the quickstart (first deploy, a one-group memory change, a no-op), it counts every AWS call
the facade makes and splits off those on the record (``shardkit-state/`` objects of the home
bucket) and its lock item, and times them against the whole apply (medians of ``--runs`` runs,
each on a fresh moto account). moto answers in-process, so times are CPU cost, not network
latency: on AWS each record call is one S3 or DynamoDB round trip in the home region.

    .venv/bin/python bench/bench_record.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shardkit.aws.facade import Aws, boto3_factory, is_mutating
from shardkit.config import load_project
from shardkit.deploy.engine import Deployer
from shardkit.deploy.lock import LOCK_PK
from shardkit.deploy.state import PREFIX
from shardkit.deploy.targets import identify

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart" / "shardkit.toml"


class Timed(Aws):
    """The facade, with each call timed and classed as record/lock or resource work."""

    def __init__(self) -> None:
        super().__init__(boto3_factory(), target="aws")
        self.log: list[tuple[str, bool, float]] = []  # (service:operation, is record, seconds)

    def call(self, service: str, region: str, operation: str, **params: Any) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return super().call(service, region, operation, **params)
        finally:
            self.log.append(
                (
                    f"{service}:{operation}",
                    _is_record(service, params),
                    time.perf_counter() - started,
                )
            )


def _is_record(service: str, params: dict[str, Any]) -> bool:
    if service == "s3":
        return str(params.get("Key", params.get("Prefix", ""))).startswith(PREFIX)
    key = params.get("Item") or params.get("Key") or {}
    return key.get("pk", {}).get("S") == LOCK_PK


@contextmanager
def moto_account() -> Iterator[None]:
    from moto import mock_aws

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    with mock_aws(config={"lambda": {"use_docker": False}}):
        yield


def one_run(tmp: Path) -> dict[str, dict[str, float]]:
    root = tmp / "quickstart"
    root.mkdir()
    shutil.copy(QUICKSTART, root / "shardkit.toml")
    text = (root / "shardkit.toml").read_text().replace('target = "local"', 'target = "aws"')
    (root / "shardkit.toml").write_text(text)
    out = {}
    with moto_account():
        aws = Timed()
        target = identify(aws, "aws")
        for name, change in (("first deploy", False), ("eu memory", True), ("no-op", False)):
            if change:  # one group's functions get more memory: an update of 4 functions
                body = (root / "shardkit.toml").read_text()
                (root / "shardkit.toml").write_text(
                    body.replace("[groups.eu]\n", "[groups.eu]\nmemory_mb = 1024\n", 1)
                )
            d = Deployer(load_project(root), target)
            plan = d.plan()
            mark = len(aws.log)
            started = time.perf_counter()
            d.apply(plan)
            total = time.perf_counter() - started
            calls = aws.log[mark:]
            record = [c for c in calls if c[1]]
            out[name] = {
                "steps": len(plan.steps),
                "calls": len(calls),
                "record writes": sum(1 for op, _, _ in record if is_mutating(op.split(":")[1])),
                "record reads": sum(1 for op, _, _ in record if not is_mutating(op.split(":")[1])),
                "record ms": 1000 * sum(t for _, _, t in record),
                "apply ms": 1000 * total,
                "ops": Counter(op for op, _, _ in record),
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp)))
    print(f"quickstart on moto, {args.runs} runs, medians\n")
    cols = ("steps", "calls", "record writes", "record reads", "record ms", "apply ms")
    print(f"{'apply':<14}" + "".join(f"{c:>15}" for c in cols))
    for name in runs[0]:
        row = [statistics.median(r[name][c] for r in runs) for c in cols]
        print(
            f"{name:<14}"
            + "".join(f"{v:>15.0f}" if i < 4 else f"{v:>15.1f}" for i, v in enumerate(row))
        )
    print("\nrecord and lock calls of the last run:")
    for name, data in runs[-1].items():
        print(f"  {name}: {dict(sorted(data['ops'].items())) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
