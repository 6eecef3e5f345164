#!/usr/bin/env python
"""Benchmark the slot records of a first deploy on the local cloud: BatchWriteItem of 25.

Run from the repository root (with the project's venv active)::

    python bench/bench_slot_writes.py            # ~1 min on an idle machine
    python bench/bench_slot_writes.py --quick    # smoke run

A first deploy writes one slot record per slot per group and region (16,384 at the default
``slot_bits``), 25 per ``BatchWriteItem``; on the local cloud the server's CPU is the cost. Measured:

1. the server's side alone, in this process: moto's DynamoDB handler behind the local cloud's
   journal (``shardkit.local.dynamodb.handle``) writing one group-region of slot records, as this
   checkout does it and as it did before (moto's own per-attribute item sizing, one journal
   record per item), round-robin in the same run;
2. the whole command: ``shardkit deploy <copy of examples/quickstart> --local --yes --json`` on a
   fresh project and a fresh local cloud: wall clock, the command's CPU and the server's CPU.

Medians; the Targets table says PASS/MISS; this is not part of the test suite and never fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import PY, REPO, Report, med, parse_args, print_header, print_table, proc_cpu_s

SLOTS = 16_384  # one group in one region of the quickstart
URL = "http://127.0.0.1:1/"
AUTH = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request, Signature=x"


def _headers(target: str) -> dict[str, str]:
    return {
        "X-Amz-Target": f"DynamoDB_20120810.{target}",
        "Content-Type": "application/x-amz-json-1.0",
        "Authorization": AUTH,
    }


def _bodies(table: str, slots: int) -> list[bytes]:
    """The BatchWriteItem requests of ``slots`` slot records, as a first deploy sends them."""
    items = [
        {
            "pk": {"S": f"eu#{slot:05x}"},
            "sk": {"S": "\x00slot"},
            "owner": {"S": f"eu-{slot % 4}"},
            "epoch": {"N": "1"},
            "state": {"S": "active"},
        }
        for slot in range(slots)
    ]
    return [
        json.dumps({"RequestItems": {table: [{"PutRequest": {"Item": i}} for i in chunk]}}).encode()
        for chunk in (items[s : s + 25] for s in range(0, slots, 25))
    ]


def _variants() -> dict[str, Callable[[], None]]:
    """``{label: switch}``: each switch puts moto's item sizing and batch handling in place."""
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.responses import DynamoHandler

    from shardkit.local import moto_patches

    before = (Item.__init__, DynamoHandler.batch_write_item)
    moto_patches.install()
    after = (Item.__init__, DynamoHandler.batch_write_item)

    def use(pair: tuple[Any, Any]) -> Callable[[], None]:
        def switch() -> None:
            Item.__init__, DynamoHandler.batch_write_item = pair

        return switch

    return {
        "before (per-attribute sizing, a record per item)": use(before),
        "this checkout": use(after),
    }


def bench_server(rep: Report, rounds: int, slots: int) -> None:
    from shardkit.local import dynamodb
    from shardkit.local.journal import Journal

    variants = _variants()
    journal = Journal(Path(tempfile.mkdtemp(prefix="shardkit-bench-slots-")))
    journal.open()
    wall: dict[str, list[float]] = {label: [] for label in variants}
    cpu: dict[str, list[float]] = {label: [] for label in variants}
    journal_bytes: dict[str, list[int]] = {label: [] for label in variants}
    try:
        for r in range(rounds):
            for n, (label, switch) in enumerate(variants.items()):
                table = f"slots-{r}-{n}"
                definition = {
                    "TableName": table,
                    "KeySchema": [
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    "AttributeDefinitions": [
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": "S"},
                    ],
                    "BillingMode": "PAY_PER_REQUEST",
                }
                dynamodb.handle(URL, _headers("CreateTable"), json.dumps(definition).encode())
                bodies = _bodies(table, slots)
                switch()
                size0 = journal.log_path.stat().st_size
                c0, t0 = time.process_time(), time.perf_counter()
                for body in bodies:
                    status, _, out = dynamodb.handle(URL, _headers("BatchWriteItem"), body)
                    assert status == 200, out
                wall[label].append(time.perf_counter() - t0)
                cpu[label].append(time.process_time() - c0)
                journal_bytes[label].append(journal.log_path.stat().st_size - size0)
    finally:
        variants["this checkout"]()
        journal.close()
        shutil.rmtree(journal.directory, ignore_errors=True)
    calls = -(-slots // 25)
    base = med(cpu[next(iter(variants))])
    print_table(
        f"1. server side: {slots:,} slot records in {calls} BatchWriteItem calls, {rounds} rounds",
        ["variant", "median s", "CPU s", "ms/call", "items/s", "journal KB", "CPU vs before"],
        [
            [
                label,
                f"{med(wall[label]):.2f}",
                f"{med(cpu[label]):.2f}",
                f"{med(cpu[label]) / calls * 1000:.1f}",
                f"{slots / med(cpu[label]):,.0f}",
                f"{med(journal_bytes[label]) / 1024:,.0f}",
                f"{med(cpu[label]) / base:.2f}x",
            ]
            for label in variants
        ],
        ["in this process: moto's handler and the journal, no HTTP; CPU = process time"],
    )
    ratio = med(cpu["this checkout"]) / base
    rep.target("server CPU per batch vs before", ratio, 0.85, ".2f", "x")


def bench_deploy(rounds: int) -> None:
    rows = []
    runs: list[tuple[float, float, float | None, int]] = []
    env = {
        **os.environ,
        "SHARDKIT_LOCAL_IDLE_TIMEOUT": "600",
        "SHARDKIT_LOCAL_MAX_LIFETIME": "1200",
    }
    for _ in range(rounds):
        tmp = Path(tempfile.mkdtemp(prefix="shardkit-bench-slots-"))
        project = tmp / "quickstart"
        shutil.copytree(
            REPO / "examples" / "quickstart", project, ignore=shutil.ignore_patterns(".shardkit")
        )
        cmd = [PY, "-m", "shardkit.cli.main"]
        try:
            subprocess.run(
                [*cmd, "local", "up", str(project)], env=env, check=True, capture_output=True
            )
            pid = json.loads((project / ".shardkit" / "local" / "cloud.json").read_text())["pid"]
            server0 = proc_cpu_s(pid)
            before = os.times()
            t0 = time.perf_counter()
            done = subprocess.run(
                [*cmd, "deploy", str(project), "--local", "--yes", "--json"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
            after = os.times()
            server1 = proc_cpu_s(pid)
            out = json.loads(done.stdout)
            client = (after.children_user - before.children_user) + (
                after.children_system - before.children_system
            )
            server = server1 - server0 if server0 is not None and server1 is not None else None
            runs.append((wall, client, server, int(out["mutating_calls"])))
        finally:
            subprocess.run(
                [*cmd, "local", "down", str(project), "--no-save"],
                env=env,
                capture_output=True,
                check=False,
            )
            shutil.rmtree(tmp, ignore_errors=True)
    servers = [r[2] for r in runs if r[2] is not None]
    rows.append(
        [
            "first deploy of the quickstart",
            str(len(runs)),
            f"{med([r[0] for r in runs]):.1f}",
            f"{med([r[1] for r in runs]):.1f}",
            f"{med(servers):.1f}" if servers else "-",
            str(runs[0][3]),
        ]
    )
    print_table(
        "2. the whole command, fresh project and fresh local cloud (already up)",
        ["case", "runs", "median wall s", "command CPU s", "server CPU s", "mutating calls"],
        rows,
        [
            f"command: {PY} -m shardkit.cli.main deploy <copy of examples/quickstart> --local --yes --json"
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, argv, "1 round of each, a quarter of the slots")
    t0 = time.perf_counter()
    rep = Report()
    print_header("bench_slot_writes", args.quick, {}, load_label="load average")
    bench_server(rep, 1 if args.quick else 5, SLOTS // 4 if args.quick else SLOTS)
    bench_deploy(1 if args.quick else 3)
    rep.finish(t0, load_at_end=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
