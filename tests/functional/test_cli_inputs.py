"""The CLI's inputs and its reports of them, in-process (bytes a shell passes on a real command
line: tests/integration/test_cli.py): keys, errors under ``--json`` for every command, help texts,
``blueprint render``'s map, and what deploy and destroy say while and after they work (on moto).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_tree import leaf_commands, params

from shardkit.cli.main import COMMANDS
from shardkit.deploy.record import Record
from shardkit.deploy.state import LocalCache

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "shardkit.toml"


CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "qs"
    root.mkdir()
    shutil.copy(QUICKSTART, root / "shardkit.toml")
    return root


# -- --json: errors are JSON too, for every command ----------------------------------------------


#: For each command, arguments that make it fail with a user error (a ShardkitError) before it
#: touches any cloud: a project directory, plan, key or map that is not there.
NOWHERE = "no-such-dir"
FAILING = {
    ("apply",): ["no-such-plan.json"],
    ("autoshard",): [NOWHERE, "--once"],
    ("blueprint", "kinds"): None,  # cannot fail but by its options: see the usage errors
    ("blueprint", "list"): None,
    ("blueprint", "render"): [NOWHERE, "--out", "cfn"],
    ("bootstrap",): [NOWHERE],
    ("cleanup",): [NOWHERE, "--yes"],
    ("deploy",): [NOWHERE, "--yes"],
    ("destroy",): [NOWHERE, "--yes"],
    ("dev",): None,  # interactive (it watches and prints logs): it has no --json
    ("invoke",): [NOWHERE, "alice"],
    ("keys", "create"): ["Bad Id", "--dir", "keys"],
    ("keys", "list"): None,
    ("keys", "show"): ["nobody", "--dir", "keys"],
    ("local", "down"): [NOWHERE],
    ("local", "status"): [NOWHERE],
    ("local", "up"): [NOWHERE],
    ("logs",): [NOWHERE],
    ("map", "build"): [NOWHERE],
    ("map", "diff"): ["a.skm", "b.skm"],
    ("map", "route"): [NOWHERE, "alice"],
    ("map", "show"): [NOWHERE],
    ("plan",): [NOWHERE],
    ("rollback",): [NOWHERE, "--yes"],
    ("simulate",): [NOWHERE, "--workload", "square"],
    ("status",): [NOWHERE],
    ("traffic",): [NOWHERE],
    ("unlock",): [NOWHERE, "lock-id"],
}


def test_the_table_names_every_command() -> None:
    commands = leaf_commands()
    assert {c[0] for c in commands} == set(COMMANDS)
    assert set(FAILING) == set(commands)
    without_json = {c for c in commands if "json_" not in params(c)}
    assert without_json == {("dev",)}


def _json_error(err: str) -> dict[str, Any]:
    (line,) = err.splitlines()
    data = json.loads(line)
    assert set(data) == {"error", "hint", "code"} and data["error"], data
    return data


@pytest.mark.parametrize("command", leaf_commands(), ids=" ".join)
def test_every_command_reports_errors_as_json_under_json(
    command: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shardkit_cli: CLI,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = shardkit_cli(*command, "--no-such-option", "--json")
    assert (code, out) == (2, "")
    usage = _json_error(err)
    assert usage["code"] == "UsageError" and "--no-such-option" in usage["error"]
    assert usage["hint"] == f"see `shardkit {' '.join(command)} --help`"

    args = FAILING[command]
    if args is None:
        return
    code, out, err = shardkit_cli(*command, *args, "--json")
    assert (code, out) == (2, ""), err
    error = _json_error(err)
    assert error["code"].endswith("Error") and error["hint"], error
    code, _, plain = shardkit_cli(*command, *args)  # the same error, as a line
    assert code == 2 and plain.startswith(f"error: {' '.join(error['error'].split())}")


def test_a_json_error_names_its_kind_and_a_key_named_json_is_not_json(
    project: Path, shardkit_cli: CLI
) -> None:
    code, _, err = shardkit_cli("map", "route", project, "", "--json")
    assert code == 2
    assert _json_error(err) == {
        "error": "key '' is empty",
        "hint": "a key is a non-empty UTF-8 string of at most 1,024 bytes, not beginning with "
        "U+0000; make a longer or binary identifier into a key by hashing it (e.g. hashlib.sha256(data).hexdigest())",
        "code": "InvalidKeyError",
    }
    code, _, err = shardkit_cli("map", "show", project, "--", "--json")
    assert code == 2 and err.startswith("error: ")  # after "--", "--json" is an argument


# -- help texts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("deploy", "Deploy to the local cloud"),
        ("plan", "Plan for the local cloud"),
        ("status", "Show what is deployed on the local cloud"),
        ("destroy", "Delete what is deployed on the local cloud"),
        ("rollback", "Roll back on the local cloud"),
        ("bootstrap", "Create the foundation on the local cloud"),
        ("unlock", "Break the lock on the local cloud"),
        ("invoke", "Send requests to the local cloud"),
        ("traffic", "Send the workload to the local cloud"),
    ],
)
def test_local_aws_help_says_what_the_command_does_there(
    command: str, says: str, shardkit_cli: CLI
) -> None:
    code, out, _ = shardkit_cli(command, "--help")
    text = " ".join(out.split())
    assert code == 0 and says in text
    assert command == "deploy" or "Deploy to" not in text


def test_the_edge_module_help_says_its_functions_are_optional(
    shardkit_cli: CLI,
) -> None:
    _, out, _ = shardkit_cli("traffic", "--help")
    text = " ".join(out.split())
    assert "Both functions are optional" in text and "cannot be imported is an error" in text


# -- blueprint render: the project's newest map, named ------------------------------------------


def _publish(project: Path, envelope: Path) -> None:
    """Record ``envelope`` as the map a deploy to the local target published, as a deploy
    caches its record on this machine."""
    record = Record.empty("quickstart", "local").model_copy(
        update={"status": "ok", "deployment": 1, "map_envelope": envelope.read_bytes()}
    )
    LocalCache(project / ".shardkit", "local").save(record.written())


def test_blueprint_render_uses_and_names_the_newest_map_built_or_deployed(
    project: Path, tmp_path: Path, shardkit_cli: CLI
) -> None:
    built, published = project / ".shardkit" / "map.skm", tmp_path / "published.skm"
    deployed = "the map deployed to local"
    assert shardkit_cli("map", "build", project, "--out", published)[0] == 0
    _publish(project, published)
    out = tmp_path / "cfn"

    # a deployed project without a local build: the deployed map, not a plan in memory
    code, text, _ = shardkit_cli("blueprint", "render", project, "--out", out)
    assert code == 0
    assert f"for map version 1 (from {deployed})" in " ".join(text.split())

    for _ in range(2):  # map.skm: versions 2 and 3, newer than the deployed version 1
        assert shardkit_cli("map", "build", project)[0] == 0
    data = json.loads(shardkit_cli("blueprint", "render", project, "--out", out, "--json")[1])
    assert data["map"] == {"version": 3, "source": str(built)}

    # a deploy publishes version 4, past the local build's 3
    assert shardkit_cli("map", "build", project, "--out", published, "--previous", built)[0] == 0
    _publish(project, published)
    data = json.loads(shardkit_cli("blueprint", "render", project, "--out", out, "--json")[1])
    assert data["map"] == {"version": 4, "source": deployed}


# -- deploy and destroy on moto: progress while they work, and what destroy says -----------------


SOLO = Path(__file__).resolve().parents[1] / "data" / "projects" / "solo" / "shardkit.toml"


@pytest.fixture
def aws_project(moto: None, tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "solo"
    root.mkdir()
    # no dependency wheels to download for AWS: the test is offline
    (root / "shardkit.toml").write_text(SOLO.read_text() + "\n[proxy]\nvendor = false\n")
    shutil.copytree(QUICKSTART.parent / "app", root / "app")  # plan imports the handler
    yield root


def _lines(out: str, command: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{command}: ")]


def test_deploy_and_destroy_show_their_phases_and_destroy_says_destroy(
    aws_project: Path, shardkit_cli: CLI
) -> None:
    code, out, err = shardkit_cli("deploy", aws_project, "--aws", "--yes")
    assert code == 0, err
    phases = _lines(out, "deploy")
    assert phases[:2] == [
        "deploy: connecting to AWS ...",
        "deploy: planning (map, code package, what is deployed) ...",
    ]
    assert phases[2].startswith("deploy: applying deploy ") and phases[2].endswith(" steps ...")
    assert " steps done in " in phases[3] and len(phases) == 4
    assert out.index(phases[1]) < out.index("plan ") < out.index(phases[2])  # then the table

    code, out, err = shardkit_cli("destroy", aws_project, "--aws", "--yes")
    assert code == 0, err
    assert [line.split(" ...")[0] for line in _lines(out, "destroy")][:2] == [
        "destroy: connecting to AWS",
        "destroy: planning (map, code package, what is deployed)",
    ]
    why = [row.split("│")[-2].strip() for row in out.splitlines() if row.startswith("│")]
    assert why and set(why) == {
        "no shards here any more: clients must not read a map naming them",  # unpublish, first
        "destroy",
        "holds data: kept (use --delete-data to delete)",
        "holds the deployment record: kept (use --delete-data to delete)",
    }

    code, out, err = shardkit_cli("deploy", aws_project, "--aws", "--yes", "--json")
    assert code == 0 and err == ""
    assert json.loads(out)["changed"] is True  # stdout is the JSON and nothing else
