"""The ``shardkit`` command, run as a real process in a temporary copy of the quickstart.

Outputs are checked against the library: what the CLI prints for a map must be what
``shardkit.decode_map`` and friends say about the same file. User errors exit with code 2 and print
exactly one ``error:`` line on stderr, never a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import shardkit
from shardkit.keys import load_public_key
from shardkit.sharding.codec import encode_map

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "shardkit.toml"
KEYS = ["alice", "eu:bob", "carol", "eu:dave", "zoë", "ü" * 512]  # non-ASCII keys route too


def run(
    *args: str | Path, cwd: Path, code: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("SHARDKIT_KEYS_DIR", "COLUMNS")}
    environment.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "shardkit.cli.main", *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def run_json(*args: str | Path, cwd: Path) -> Any:
    return json.loads(run(*args, "--json", cwd=cwd).stdout)


def fails(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail as a user error; its one stderr line."""
    proc = run(*args, cwd=cwd, code=2, env=env)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert proc.stdout == ""
    return lines[0]


def new_project(root: Path) -> Path:
    project = root / "qs"
    project.mkdir()
    shutil.copy(QUICKSTART, project / "shardkit.toml")
    return project


def read_map(path: Path, keys: Path) -> shardkit.ShardMap:
    return shardkit.decode_map(path.read_bytes(), shardkit.load_trusted_keys(keys))


def table_rows(text: str) -> list[list[str]]:
    """The body rows of rich tables in ``text``, as lists of cell strings."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return new_project(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart copy with its map built once (version 1). Read-only for the tests."""
    project = new_project(tmp_path_factory.mktemp("built"))
    run("map", "build", project, cwd=project.parent)
    return project


# -- map build ------------------------------------------------------------------------------------


def test_build_writes_a_signed_map_and_rebuilds_move_nothing(project: Path) -> None:
    cwd = project.parent
    map_path, keys = project / ".shardkit" / "map.skm", project / ".shardkit" / "keys"

    out = run("map", "build", project.name, cwd=cwd).stdout
    first = read_map(map_path, keys)
    assert first.version == 1
    assert (
        f"wrote {project.name}/.shardkit/map.skm ({map_path.stat().st_size:,} bytes): "
        f"version 1, 8 shards, expires " in out
    )
    rows = {r[0]: r for r in table_rows(out)}
    counts = first.slot_counts()
    assert sorted(rows) == sorted(s.id for s in first.shards)
    for s in first.shards:  # full values: piped output is never truncated
        assert rows[s.id][1:6] == [
            s.group,
            s.jurisdiction,
            s.region,
            f"{s.weight:g}",
            f"{counts[s.id]:,}",
        ]
    # create_if_missing made the development key; the private half is for the owner only
    assert (keys / "quickstart-dev.key").stat().st_mode & 0o777 == 0o600
    assert map_path.stat().st_mode & 0o777 == 0o644  # a map is public, signed data

    again = run_json("map", "build", project.name, cwd=cwd)
    assert again["path"] == f"{project.name}/.shardkit/map.skm"
    assert again["bytes"] == map_path.stat().st_size
    assert again["map"]["version"] == 2
    assert [s["id"] for s in again["map"]["shards"]] == [s.id for s in first.shards]
    assert again["diff"]["old_version"] == 1 and again["diff"]["new_version"] == 2
    assert (again["diff"]["moved_slots"], again["diff"]["moves"]) == (0, [])
    assert again["diff"]["epochs"] == {} and again["diff"]["added"] == []
    assert read_map(map_path, keys).version == 2

    text = run("map", "build", project, cwd=cwd).stdout
    assert "version 3, 8 shards" in text
    assert "version 2 -> 3: 0 slot(s) move, 0 replica entries change" in text

    fresh = run_json("map", "build", project, "--fresh", cwd=cwd)
    assert fresh["map"]["version"] == 1 and fresh["diff"] is None
    assert read_map(map_path, keys).version == 1


def test_adding_a_shard_moves_slots_only_to_it(project: Path) -> None:
    cwd, keys = project.parent, project / ".shardkit" / "keys"
    old_path = cwd / "v1.skm"
    run("map", "build", project, "--out", old_path, cwd=cwd)
    toml = project / "shardkit.toml"
    text = toml.read_text()
    assert text.count("shards = 4                #") == 1
    toml.write_text(text.replace("shards = 4                #", "shards = 5 #"))

    built = run_json("map", "build", project, "--previous", old_path, cwd=cwd)
    new_path = project / ".shardkit" / "map.skm"
    old, new = read_map(old_path, keys), read_map(new_path, keys)
    expected = shardkit.diff_maps(old, new).to_dict()

    diff = run_json("map", "diff", old_path, project, "--keys", keys, cwd=cwd)
    assert diff == expected
    assert built["diff"] == expected
    assert (diff["old_version"], diff["new_version"]) == (1, 2)
    assert diff["added"] == ["eu-4"] and diff["removed"] == []
    # appending a shard moves exactly the slots the new shard takes, and nothing else
    assert diff["moved_slots"] == new.slot_counts()["eu-4"] > 0
    assert {(group, dest) for group, _, _, dest in diff["moves"]} == {("eu", "eu-4")}
    assert diff["moved_slots"] in (16384 // 5, 16384 // 5 + 1)

    text = run("map", "diff", old_path, new_path, "--keys", keys, cwd=cwd).stdout
    assert f"version 1 -> 2: {diff['moved_slots']:,} slot(s) move" in text
    assert "added: eu-4   removed: -" in text
    pairs = {(r[0], r[1]): r[2] for r in table_rows(text)}
    assert pairs == {(p["source"], p["destination"]): f"{p['slots']:,}" for p in diff["by_pair"]}


def test_build_refuses_an_out_path_that_cannot_be_a_file(project: Path) -> None:
    cwd = project.parent
    line = fails("map", "build", project, "--out", project / "shardkit.toml" / "map.skm", cwd=cwd)
    assert line == (
        f"error: cannot write the map to {project}/shardkit.toml/map.skm: "
        f"{project}/shardkit.toml is a file, not a directory — pass --out with a "
        f"path inside a directory"
    )
    line = fails("map", "build", project, "--out", project, cwd=cwd)
    assert line.startswith(f"error: cannot write the map to {project}: it is a directory")
    assert sorted(p.name for p in project.iterdir()) == ["shardkit.toml"]  # nothing was made


# -- map show / route -----------------------------------------------------------------------------


def test_show(built: Path) -> None:
    cwd, keys = built.parent, built / ".shardkit" / "keys"
    held = read_map(built / ".shardkit" / "map.skm", keys)

    text = run("map", "show", built, cwd=cwd).stdout
    assert "project quickstart  version 1  hash xxh64-v1  16,384 slots per group" in text
    assert "residency: rules 'eu:' -> eu; default us" in text
    assert "expired" not in text
    assert sorted(r[0] for r in table_rows(text)) == sorted(s.id for s in held.shards)

    assert run_json("map", "show", built, cwd=cwd) == held.to_dict()
    tables = run_json(
        "map", "show", built / ".shardkit" / "map.skm", "--keys", keys, "--tables", cwd=cwd
    )
    assert tables == held.to_dict(tables=True)
    eu = tables["groups"]["eu"]
    assert len(eu["primary"]) == 16384 and len(eu["replica_columns"]) == 1
    assert all(a != b for a, b in zip(eu["primary"], eu["replica_columns"][0], strict=True))


def test_route_matches_the_library(built: Path) -> None:
    cwd = built.parent
    held = read_map(built / ".shardkit" / "map.skm", built / ".shardkit" / "keys")

    out = run_json("map", "route", built, *KEYS, cwd=cwd)
    assert out["version"] == held.version
    assert [r["key"] for r in out["routes"]] == KEYS
    for row in out["routes"]:
        owner = held.route(row["key"])
        assert row == {
            "key": row["key"],
            "jurisdiction": owner.jurisdiction,
            "slot": held.slot(row["key"]),
            "shard": owner.id,
            "region": owner.region,
            "epoch": owner.epoch,
            "failover": [s.id for s in held.preference_list(row["key"])[1:]],
        }
        # residency: "eu:" keys stay in eu, everything else takes the default (us)
        assert row["jurisdiction"] == ("eu" if row["key"].startswith("eu:") else "us")
        assert all(f.split("-")[0] == row["jurisdiction"] for f in row["failover"])

    text = run("map", "route", built, "alice", "eu:bob", cwd=cwd).stdout
    assert "map version 1" in text
    rows = table_rows(text)
    assert [r[:6] for r in rows] == [
        [
            k,
            held.route(k).jurisdiction,
            str(held.slot(k)),
            held.route(k).id,
            held.route(k).region,
            str(held.route(k).epoch),
        ]
        for k in ("alice", "eu:bob")
    ]

    tagged = run_json("map", "route", built, "alice", "--jurisdiction", "eu", cwd=cwd)
    assert tagged["routes"][0]["jurisdiction"] == "eu"
    assert tagged["routes"][0]["shard"] == held.route("alice", "eu").id


def test_route_jurisdiction_errors(built: Path) -> None:
    cwd = built.parent
    line = fails("map", "route", built, "eu:bob", "--jurisdiction", "us", cwd=cwd)
    assert line == (
        "error: key 'eu:bob' is tagged 'us' but its prefix 'eu:' belongs to 'eu' — "
        "fix the tag or the key; a key never changes jurisdiction"
    )
    line = fails("map", "route", built, "alice", "--jurisdiction", "ap", cwd=cwd)
    assert line.startswith("error: jurisdiction 'ap' has no shards in map version 1")


def test_trusted_keys_come_from_keys_option_or_environment(built: Path, tmp_path: Path) -> None:
    map_file, keys = built / ".shardkit" / "map.skm", built / ".shardkit" / "keys"
    line = fails("map", "show", map_file, cwd=tmp_path)  # ./.shardkit/keys does not exist here
    assert line.startswith(f"error: cannot verify {map_file}: no key directory .shardkit/keys — ")
    assert "--keys DIR" in line
    out = run(
        "map",
        "route",
        map_file,
        "alice",
        "--json",
        cwd=tmp_path,
        env={"SHARDKIT_KEYS_DIR": str(keys)},
    ).stdout
    assert json.loads(out)["version"] == 1


# -- keys ----------------------------------------------------------------------------------------


def test_keys_create_show_list(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    created = run_json("keys", "create", "ops-1", "--dir", keys, cwd=tmp_path)
    raw = load_public_key(keys / "ops-1.pub")
    assert created == {
        "key_id": "ops-1",
        "public_key": base64.b64encode(raw).decode(),
        "fingerprint": hashlib.sha256(raw).hexdigest()[:16],
        "path": f"{keys}/ops-1.pub",
        "has_private": True,
    }
    assert (keys / "ops-1.key").stat().st_mode & 0o777 == 0o600
    assert shardkit.load_signing_key("ops-1", keys).public_bytes == raw

    assert run_json("keys", "show", "ops-1", "--dir", keys, cwd=tmp_path) == created
    assert run_json("keys", "list", "--dir", keys, cwd=tmp_path) == [created]
    text = run("keys", "list", "--dir", keys, cwd=tmp_path).stdout
    assert table_rows(text) == [["ops-1", created["fingerprint"], "yes", created["public_key"]]]

    private = (keys / "ops-1.key").read_bytes()
    line = fails("keys", "create", "ops-1", "--dir", keys, cwd=tmp_path)
    assert line.startswith(f"error: key 'ops-1' already exists at {keys}/ops-1.key — ")
    assert (keys / "ops-1.key").read_bytes() == private  # never overwritten

    line = fails("keys", "show", "ops-2", "--dir", keys, cwd=tmp_path)
    assert line == (
        f"error: no key 'ops-2' in {keys} — create it with "
        f"`shardkit keys create ops-2 --dir {keys}`"
    )
    line = fails("keys", "create", "Ops 1", "--dir", keys, cwd=tmp_path)
    assert line.startswith("error: key id 'Ops 1' is not allowed — use 1-63 characters")
    assert sorted(p.name for p in keys.iterdir()) == ["ops-1.key", "ops-1.pub"]


def test_keys_list_of_an_empty_directory(tmp_path: Path) -> None:
    assert run_json("keys", "list", "--dir", tmp_path / "none", cwd=tmp_path) == []


# -- user errors: exit 2, one line, no traceback -----------------------------------------------


def test_missing_project_directory(tmp_path: Path) -> None:
    line = fails("map", "build", "nowhere", cwd=tmp_path)
    assert line == (
        "error: nowhere: no such project directory — pass the directory that holds shardkit.toml"
    )


def test_bad_toml(project: Path) -> None:
    toml = project / "shardkit.toml"
    toml.write_text(toml.read_text().replace("[project]", "[project", 1))
    line = fails("map", "build", project.name, cwd=project.parent)
    assert line.startswith(f"error: {project.name}/shardkit.toml: invalid TOML: ")
    assert "(at line 4, column 9)" in line
    assert line.endswith("— fix the TOML syntax at the line and column named")
    assert not (project / ".shardkit").exists()


def test_invalid_config_lists_every_problem_on_one_line(project: Path) -> None:
    toml = project / "shardkit.toml"
    toml.write_text(
        toml.read_text()
        .replace("slot_bits = 14", "slot_bits = 3")
        .replace("eu-central-1 = {", "eu-centrall-1 = {")
    )
    line = fails("map", "build", project.name, cwd=project.parent)
    assert line.startswith(f"error: {project.name}/shardkit.toml: ")
    assert "hashing.slot_bits = 3: Input should be greater than or equal to 8; " in line
    assert "regions: key 'eu-centrall-1': unknown AWS region (did you mean 'eu-central-1'?)" in line


def test_tampered_map(built: Path, tmp_path: Path) -> None:
    data = bytearray((built / ".shardkit" / "map.skm").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "bad.skm").write_bytes(bytes(data))
    keys = built / ".shardkit" / "keys"
    for command in (["map", "show"], ["map", "route"]):
        args = [*command, tmp_path / "bad.skm", *(["alice"] if command[1] == "route" else [])]
        line = fails(*args, "--keys", keys, cwd=tmp_path)
        assert line.startswith("error: the map's signature does not verify: it was altered — ")


def test_map_signed_by_an_untrusted_key(built: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-keys"
    shardkit.create_key("other", other)
    line = fails("map", "route", built, "alice", "--keys", other, cwd=tmp_path)
    assert line.startswith(
        "error: map signed by untrusted key 'quickstart-dev' (trusted: other) — "
    )


def test_expired_map(project: Path) -> None:
    cwd = project.parent
    loaded = shardkit.load_project(project)
    ttl = loaded.config.signing.map_ttl_hours * 3600
    old = shardkit.build_map(loaded.config, now=time.time() - ttl - 86400)
    key = shardkit.create_key("quickstart-dev", loaded.keys_dir)
    assert old.expires_at < time.time()
    expired = cwd / "expired.skm"
    expired.write_bytes(
        encode_map(old, key.key_id, shardkit.load_signing_key(key.key_id, loaded.keys_dir).sign)
    )

    line = fails("map", "route", expired, "alice", "--keys", loaded.keys_dir, cwd=cwd)
    assert line.startswith("error: map version 1 expired at ")
    assert line.endswith(f"— {shardkit.MapExpiredError.hint}")

    # inspecting and replacing an expired map still works
    text = run("map", "show", expired, "--keys", loaded.keys_dir, cwd=cwd).stdout
    assert "this map has expired: clients refuse it" in text
    out = run_json("map", "build", project, "--previous", expired, cwd=cwd)
    assert out["map"]["version"] == 2 and out["diff"]["moved_slots"] == 0


def test_missing_map(project: Path) -> None:
    line = fails("map", "show", project.name, cwd=project.parent)
    assert line == (
        f"error: no map at {project.name}/.shardkit/map.skm — build one with "
        f"`shardkit map build PROJECT_DIR`"
    )


@pytest.mark.parametrize(
    ("args", "start", "named", "command"),
    [
        (["map", "show"], "error: Missing argument", "'TARGET'", "map show"),
        (["map", "route", "qs"], "error: Missing argument", "'KEY...'", "map route"),
        (["map", "show", "qs", "--bogus"], "error: No such option", "--bogus", "map show"),
        (["map", "frobnicate"], "error: No such command", "'frobnicate'", "map"),
    ],
)
def test_usage_errors(
    tmp_path: Path, args: list[str], start: str, named: str, command: str
) -> None:
    line = fails(*args, cwd=tmp_path)
    assert line.startswith(start)
    assert named in line
    assert line.endswith(f"— see `shardkit {command} --help`")


# -- keys: one rule, exit 2, on a real command line -------------------------------------------------


def test_map_route_refuses_keys_the_shards_refuse_and_undecodable_bytes(tmp_path: Path) -> None:
    project = tmp_path / "qs"
    project.mkdir()
    shutil.copy(QUICKSTART, project / "shardkit.toml")
    env = {k: v for k, v in os.environ.items() if k != "SHARDKIT_KEYS_DIR"}
    built = subprocess.run(
        [sys.executable, "-m", "shardkit.cli.main", "map", "build", str(project)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    cases = {
        b"": b"error: key '' is empty",
        b"k" * 2000: b"is 2,000 bytes in UTF-8, over the limit of 1,024",
        b"bad\xffkey": b"error: key 'bad\\xffkey' is not valid UTF-8",  # $'bad\xffkey'
    }
    for key, expected in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "shardkit.cli.main", "map", "route", str(project), key],
            capture_output=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.splitlines()
        assert expected in line and b"Traceback" not in proc.stderr
        assert b"at most 1,024 bytes" in line and proc.stdout == b""
