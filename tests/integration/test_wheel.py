"""The blueprint definitions ship inside the wheel: an installed shardkit (not this checkout)
finds, expands and renders them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs in a Python that sees the installed wheel and the venv's dependencies, but not the editable
# install of this checkout: -I ignores PYTHONPATH and the cwd, -S skips site (and so the .pth
# file that puts /work/main on the path); the dependencies come back as plain path entries.
SCRIPT = r"""
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1]]
sys.path += sys.argv[2:]
import shardkit
from shardkit.blueprint import CodeArtifact, available, load_definition
from shardkit.blueprint.cloudformation import blueprint_for_render, render
from shardkit.config import Project, ProjectConfig
from shardkit.config.build import build_map

config = ProjectConfig.model_validate({
    "project": {"name": "wheel"},
    "signing": {"key_id": "wheel"},
    "regions": {"eu-west-1": {"jurisdiction": "eu"}, "us-east-1": {"jurisdiction": "us"}},
    "residency": {"default": "us"},
    "groups": {
        "eu": {"jurisdiction": "eu", "regions": ["eu-west-1"], "shards": 2},
        "us": {"jurisdiction": "us", "regions": ["us-east-1"], "shards": 1},
    },
})
definition = load_definition("stateful-inference-proxy")
code = CodeArtifact("artifacts/code/" + "0" * 64 + ".zip", "0" * 64)
blueprint = blueprint_for_render(Project(Path("."), config), build_map(config), code)
templates = render(blueprint)
print(json.dumps({
    "shardkit": shardkit.__file__,
    "blueprint_module": sys.modules["shardkit.blueprint.definition"].__file__,
    "available": available(),
    "definition": definition["name"],
    "resources": {region: sorted(t["Resources"]) for region, t in templates.items()},
}))
"""


def _build_wheel(tmp: Path) -> Path:
    """pip wheel of a clean copy of the sources (so no stale build/ dir is reused or left).

    Offline (no build isolation) when the venv's setuptools can build this pyproject (the
    SPDX ``license`` string needs setuptools >= 77); otherwise pip fetches the build backend.
    """
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "shardkit", src / "shardkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    offline = ["--no-build-isolation"] if _setuptools_at_least(77) else []
    out = tmp / "dist"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            *offline,
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("shardkit-*.whl")
    return wheel


def _setuptools_at_least(major: int) -> bool:
    try:
        return int(metadata.version("setuptools").split(".")[0]) >= major
    except metadata.PackageNotFoundError:
        return False


def test_installed_wheel_ships_and_renders_the_blueprint(tmp_path):
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "shardkit" / "blueprints" / "stateful-inference-proxy.toml").is_file()

    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SCRIPT, str(site), *deps],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert Path(result["shardkit"]).is_relative_to(site)
    assert Path(result["blueprint_module"]).is_relative_to(site)
    assert result["available"] == ["stateful-inference-proxy"]
    assert result["definition"] == "stateful-inference-proxy"
    assert sorted(result["resources"]) == ["eu-west-1", "us-east-1"]
    assert {"ArtifactBucket", "StateTable", "FunctionEu0", "FunctionEu1", "FunctionUrlEu1"} <= set(
        result["resources"]["eu-west-1"]
    )
    assert "FunctionUs0" in result["resources"]["us-east-1"]
    assert not any(lid.endswith(("Eu0", "Eu1")) for lid in result["resources"]["us-east-1"])
