"""``shardkit simulate``, in-process: the table, --json rows, the picture, baselines, overrides,
traces, and one error line (exit 2) for every bad input."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from shardkit.cli.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "autoshard"
SMALL = "uniform:rps=1500,keys=20000"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example project with 2^10 slots (quick), no built map: the start is its config."""
    target = tmp_path / "autoshard"
    target.mkdir()
    text = (EXAMPLE / "shardkit.toml").read_text()
    (target / "shardkit.toml").write_text(
        text.replace('name = "autoshard"', 'name = "autoshard"\n\n[hashing]\nslot_bits = 10')
    )
    return target


def cli(capsys: pytest.CaptureFixture[str], *args: Any, code: int = 0) -> tuple[str, str]:
    try:
        main([str(a) for a in args])
        exit_code = 0
    except SystemExit as exc:
        exit_code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert exit_code == code, (out, err)
    return out, err


def error(capsys: pytest.CaptureFixture[str], *args: Any) -> str:
    out, err = cli(capsys, *args, code=2)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    return lines[0]


def test_json_rows_are_the_same_for_the_same_seed(project: Path, capsys) -> None:
    args = ("simulate", project, "--workload", f"burst:{SMALL[8:]},burst_at=60", "--duration", "3m")
    first = json.loads(cli(capsys, *args, "--json")[0])
    again = json.loads(cli(capsys, *args, "--json")[0])
    assert first == again
    assert first["policy"] == "shardkit" and first["group"] == "eu" and first["slots"] == 1024
    assert len(first["rows"]) == 18 and first["rows"][0]["shards"] == 8
    assert {
        "t",
        "shards",
        "imbalance",
        "slots_moved",
        "cold_starts",
        "cost_usd",
        "violations",
    } <= set(first["rows"][0])
    assert first["summary"]["violations"] == 0
    split = [d for d in first["decisions"] if "split" in d["actions"]]
    assert split and split[0]["reasons"] and split[0]["change"]["added"]
    other = json.loads(cli(capsys, *args, "--json", "--seed", "1")[0])
    assert other["rows"] != first["rows"]


def test_the_table_and_a_picture(project: Path, capsys, tmp_path: Path) -> None:
    picture = tmp_path / "out" / "run.svg"
    out, _ = cli(
        capsys, "simulate", project, "--workload", SMALL, "--duration", "120", "--plot", picture
    )
    flat = " ".join(out.split())  # the table's title may wrap at the terminal's width
    assert "shardkit policy, workload uniform:keys=20000,rps=1500, group eu" in flat
    assert "imbalance (max/mean) p50" in out and "residency violations 0" in out
    assert f"picture: {picture}\n" in out  # one line, never wrapped
    svg = picture.read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    png = tmp_path / "run.png"
    cli(capsys, "simulate", project, "--workload", SMALL, "--duration", "60", "--plot", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines_and_policy_overrides(project: Path, capsys) -> None:
    args = ("simulate", project, "--workload", "square:rps=1500,keys=20000,period=120")
    static = json.loads(cli(capsys, *args, "--duration", "4m", "--baseline", "static", "--json")[0])
    assert static["policy"] == "static" and static["summary"]["slots_moved"] == 0
    capped = json.loads(
        cli(capsys, *args, "--duration", "4m", "--policy", "max_shards=9", "--json")[0]
    )
    assert capped["summary"]["shards_max"] <= 9
    off = json.loads(cli(capsys, *args, "--duration", "2m", "--policy", "mode=off", "--json")[0])
    assert off["summary"]["slots_moved"] == 0


def test_a_group_without_a_policy_needs_a_target(project: Path, capsys) -> None:
    line = error(capsys, "simulate", project, "--group", "us", "--workload", SMALL)
    assert "group 'us' has no [groups.us.autoshard] policy" in line
    out = json.loads(
        cli(
            capsys,
            "simulate",
            project,
            "--group",
            "us",
            "--workload",
            SMALL,
            "--duration",
            "30",
            "--policy",
            "target_rps=500",
            "--json",
        )[0]
    )
    assert out["group"] == "us" and len(out["rows"]) == 3


def test_a_jsonl_trace_replays(project: Path, capsys, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps({"t": i / 10, "key": f"k{i % 50}"}) for i in range(600)))
    out = json.loads(cli(capsys, "simulate", project, "--trace", trace, "--json")[0])
    assert len(out["rows"]) == 6 and sum(r["requests"] for r in out["rows"]) == 600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workload", "nope"), "unknown workload 'nope'"),
        ((), "give exactly one of --workload NAME[:k=v,...] and --trace FILE"),
        (("--workload", SMALL, "--trace", "x.jsonl"), "give exactly one of"),
        (("--workload", SMALL, "--duration", "5y"), "--duration '5y': must be a time"),
        (("--workload", SMALL, "--policy", "split_above"), "--policy 'split_above': expected"),
        (("--workload", SMALL, "--policy", "churn_budget=2"), "autoshard.churn_budget = 2"),
        (("--workload", SMALL, "--group", "asia"), "--group 'asia': the project has no such"),
        (("--workload", SMALL, "--plot", "x.gif"), "the picture must end in .png or .svg"),
        (("--trace", "missing.jsonl"), "cannot read the trace missing.jsonl"),
    ],
)
def test_bad_input_is_one_error_line(project: Path, capsys, args, message) -> None:
    assert message in error(capsys, "simulate", project, *args)


def test_without_matplotlib_the_picture_is_a_clear_error(
    project: Path, capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    line = error(
        capsys,
        "simulate",
        project,
        "--workload",
        SMALL,
        "--duration",
        "10",
        "--plot",
        tmp_path / "p.svg",
    )
    assert "drawing the picture needs matplotlib" in line and "shardkit[sim]" in line
    assert not (tmp_path / "p.svg").exists()


def test_the_example_project_loads_as_shipped(tmp_path: Path, capsys) -> None:
    copy = tmp_path / "ex"
    shutil.copytree(EXAMPLE, copy)
    out = json.loads(
        cli(capsys, "simulate", copy, "--workload", SMALL, "--duration", "20", "--json")[0]
    )
    assert out["slots"] == 16384 and out["rows"][0]["shards"] == 8
