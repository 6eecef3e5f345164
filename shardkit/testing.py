"""pytest fixtures for testing a shardkit project against its own isolated local cloud.

Installed with shardkit and registered through the ``pytest11`` entry point, so a project's tests
need no import and no conftest::

    def test_a_key_learns(shardkit_client):
        assert shardkit_client.infer("alice", {"text": "hi"}).status == 200

Which project: the ``shardkit_project`` ini option (``[tool.pytest.ini_options]
shardkit_project = "."``), or ``--shardkit-project DIR``, or else the directory of pytest's
configuration file. The project is copied into a temporary directory (its code, shardkit.toml,
``bundles/`` and its keys; never its ``.shardkit`` state) and deployed there to a local cloud of
its own: the tests never touch the project's own local cloud or its tables, and two pytest
processes (e.g. xdist workers) each get their own. Each copy is deployed once per session and
stopped, with its tables deleted, when the session ends.

Fixtures:

* ``shardkit_project`` (session) - :class:`DeployedProject` of the configured project;
* ``shardkit_client`` - its :class:`~shardkit.routing.RoutingClient`;
* ``shardkit_deploy`` (session) - ``shardkit_deploy(path, fresh=False)`` deploys any project
  directory the same way (``fresh=True``: a new copy, for a test that changes the project).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["DeployedProject", "deploy_copy"]

_SKIP = shutil.ignore_patterns(
    ".shardkit", ".git", ".venv", "__pycache__", ".pytest_cache", "*.pyc", "node_modules"
)


@dataclass
class DeployedProject:
    """A copy of a project, deployed to its own local cloud."""

    source: Path
    root: Path  # the copy
    outputs: dict[str, Any]
    _clients: list[Any] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The local cloud's AWS endpoint (moto), for boto3 or the AWS CLI."""
        from .local import server

        return server.require(self.root)

    def client(self, **options: Any) -> Any:
        """A new :class:`~shardkit.routing.RoutingClient` (closed at the end of the session);
        ``options`` as for :func:`~shardkit.deploy.client.client_for_project`."""
        from .deploy.client import client_for_project

        made = client_for_project(self.root, **options)
        self._clients.append(made)
        return made

    def aws(self, service: str, region: str) -> Any:
        """A boto3 client of the local cloud (e.g. ``aws("dynamodb", "eu-west-1")``)."""
        from .local import server

        return server.client(service, region, self.endpoint)

    def redeploy(self) -> dict[str, Any]:
        """Deploy the copy again, after a test changed it; returns the new outputs."""
        self.outputs = _deploy(self.root)
        return self.outputs

    def stop(self) -> None:
        from .local import server

        for made in self._clients:
            made.close()
        server.down(self.root, save_tables=False)


def deploy_copy(source: str | Path, workdir: Path) -> DeployedProject:
    """Copy the project at ``source`` into ``workdir`` and deploy it to its own local cloud."""
    from .config import load_project

    source = Path(source).resolve()
    project = load_project(source)  # a clear error for a directory that is not a project
    root = workdir / source.name
    shutil.copytree(source, root, ignore=_SKIP)
    keys = project.keys_dir.resolve()
    if keys.is_dir() and keys.is_relative_to(source):
        shutil.copytree(keys, root / keys.relative_to(source), dirs_exist_ok=True)
    deployed = DeployedProject(source, root, {})
    try:
        deployed.redeploy()
    except BaseException:
        deployed.stop()
        raise
    return deployed


def _deploy(root: Path) -> dict[str, Any]:
    from .config import load_project
    from .deploy.engine import Deployer
    from .deploy.targets import open_target

    project = load_project(root)
    deployer = Deployer(project, open_target(project, local=True, start=True))
    if deployer.needs_restore():
        deployer.apply(deployer.plan_restore())
    plan = deployer.plan()
    if not plan.is_noop:
        deployer.apply(plan)
    return deployer.outputs()


# -- the pytest plugin ------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("shardkit_project", "the shardkit project the shardkit_* fixtures deploy")
    parser.addoption(
        "--shardkit-project",
        default=None,
        help="the shardkit project the shardkit_* fixtures deploy (overrides the ini option)",
    )


@pytest.fixture(scope="session")
def shardkit_deploy(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., DeployedProject]]:
    shared: dict[Path, DeployedProject] = {}
    made: list[DeployedProject] = []

    def deploy(path: str | Path, *, fresh: bool = False) -> DeployedProject:
        source = Path(path).resolve()
        if not fresh and source in shared:
            return shared[source]
        project = deploy_copy(source, Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())))
        made.append(project)
        if not fresh:
            shared[source] = project
        return project

    try:
        yield deploy
    finally:
        for project in made:
            project.stop()


@pytest.fixture(scope="session")
def shardkit_project(
    request: pytest.FixtureRequest, shardkit_deploy: Callable[..., DeployedProject]
) -> DeployedProject:
    return shardkit_deploy(_configured(request.config))


@pytest.fixture
def shardkit_client(shardkit_project: DeployedProject) -> Any:
    return shardkit_project.client()


def _configured(config: pytest.Config) -> Path:
    chosen = config.getoption("--shardkit-project") or config.getini("shardkit_project")
    base = config.inipath.parent if config.inipath else config.rootpath
    path = (base / chosen) if chosen else base
    if not (path / "shardkit.toml").is_file():
        raise pytest.UsageError(
            f"shardkit_project: {path} holds no shardkit.toml; set `shardkit_project` in "
            "[tool.pytest.ini_options] or pass --shardkit-project DIR"
        )
    return path
