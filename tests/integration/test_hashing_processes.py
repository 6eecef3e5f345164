"""Routing is the same in every process (docs/architecture.md §4.1): fixed keys routed in fresh
interpreters under three ``PYTHONHASHSEED``s give literal expected owners, tables and failover
orders.

Python's built-in ``hash()`` is salted per process; shardkit's routing must not care.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# -- the same routes in every process -------------------------------------------------------------

ROUTE_KEYS = (
    [f"user-{i}" for i in range(20)]
    + [f"eu:user-{i}" for i in range(15)]
    + [
        "",
        "eu:",
        "eu",
        "EU:user-1",
        "eu-user-1",
        "session/9f1c",
        "tenant:acme",
        "eu:tenant:acme",
        "ключ",
        "eu:ключ",
        "日本語",
        "🙂",
        "a" * 100,
        " eu:x",
        "eu:eu:x",
    ]
)

EXPECTED_ROUTES = [
    ("user-0", "us-1"),
    ("user-1", "us-0"),
    ("user-2", "us-3"),
    ("user-3", "us-1"),
    ("user-4", "us-2"),
    ("user-5", "us-1"),
    ("user-6", "us-0"),
    ("user-7", "us-2"),
    ("user-8", "us-0"),
    ("user-9", "us-2"),
    ("user-10", "us-0"),
    ("user-11", "us-1"),
    ("user-12", "us-1"),
    ("user-13", "us-0"),
    ("user-14", "us-2"),
    ("user-15", "us-1"),
    ("user-16", "us-2"),
    ("user-17", "us-0"),
    ("user-18", "us-1"),
    ("user-19", "us-0"),
    ("eu:user-0", "eu-3"),
    ("eu:user-1", "eu-1"),
    ("eu:user-2", "eu-0"),
    ("eu:user-3", "eu-2"),
    ("eu:user-4", "eu-2"),
    ("eu:user-5", "eu-0"),
    ("eu:user-6", "eu-2"),
    ("eu:user-7", "eu-2"),
    ("eu:user-8", "eu-2"),
    ("eu:user-9", "eu-3"),
    ("eu:user-10", "eu-1"),
    ("eu:user-11", "eu-0"),
    ("eu:user-12", "eu-0"),
    ("eu:user-13", "eu-2"),
    ("eu:user-14", "eu-1"),
    ("", "us-0"),
    ("eu:", "eu-2"),
    ("eu", "us-1"),
    ("EU:user-1", "us-1"),
    ("eu-user-1", "us-0"),
    ("session/9f1c", "us-3"),
    ("tenant:acme", "us-0"),
    ("eu:tenant:acme", "eu-0"),
    ("ключ", "us-1"),
    ("eu:ключ", "eu-2"),
    ("日本語", "us-0"),
    ("🙂", "us-3"),
    ("a" * 100, "us-3"),
    (" eu:x", "us-3"),
    ("eu:eu:x", "eu-3"),
]

#: sha256 of the quickstart map's full tables (every slot's primary and replicas), as JSON.
EXPECTED_TABLES_SHA256 = "eaa614d698df6dfb037ff9e565bc14fb409ad51be436d3cc1e766330a6a51b8b"

#: sha256 of the JSON list of every ROUTE_KEYS key's full preference list (failover order).
EXPECTED_PREFERENCES_SHA256 = "55de566f320527a7d5196ed42ab8dd7f7877765e8a5230e16ae6f5234e712334"

_ROUTE_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import shardkit
    config, now, keys = json.loads(sys.stdin.read())
    m = shardkit.build_map(shardkit.ProjectConfig.model_validate(config), now=now)
    tables = json.dumps(m.to_dict(tables=True)["groups"], sort_keys=True).encode()
    print(json.dumps({
        "routes": [[k, m.route(k).id] for k in keys],
        "batch": [s.id for s in m.route_many(keys)],
        "prefs": hashlib.sha256(json.dumps(
            [[s.id for s in m.preference_list(k)] for k in keys]).encode()).hexdigest(),
        "tables": hashlib.sha256(tables).hexdigest(),
        "builtin_hash": hash("shardkit"),
    }))
""")


def test_routes_are_identical_across_hash_seeds_and_pinned(quickstart_dict) -> None:
    stdin = json.dumps([quickstart_dict, 1_700_000_000, ROUTE_KEYS])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _ROUTE_SCRIPT],
            env=dict(os.environ, PYTHONHASHSEED=seed),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("0", "1", "4242")
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(stdin, timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    # The seeds really differ (so the comparison below is not vacuous) ...
    assert len({r["builtin_hash"] for r in results}) == 3
    # ... and routing does not care.
    expected = [list(pair) for pair in EXPECTED_ROUTES]
    for r in results:
        assert r["routes"] == expected
        assert r["batch"] == [sid for _, sid in EXPECTED_ROUTES]
        assert r["tables"] == EXPECTED_TABLES_SHA256
        assert r["prefs"] == EXPECTED_PREFERENCES_SHA256
    assert [k for k, _ in EXPECTED_ROUTES] == ROUTE_KEYS
