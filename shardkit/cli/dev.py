"""``shardkit dev DIR``: deploy to the local cloud, redeploy on every save, print the logs.

Like ``sam sync --watch`` or ``sst dev``, without an AWS account: the project is deployed to its
local cloud (started if needed) with the ordinary deploy engine, then ``shardkit.toml``, the code
directory and ``bundles/`` are watched (:mod:`shardkit.local.watch`); each save is planned and
applied again - a code change updates the functions' code and moves their aliases, and the local
cloud pre-warms the new version, so the next request is served by the new code warm. Meanwhile
the functions' logs are printed as they arrive (:mod:`shardkit.logs`, as ``shardkit logs -f``).

A save that does not deploy (a syntax error in shardkit.toml, a failing step) is reported and
the previous deployment keeps serving; the next save tries again. Ctrl-C stops watching; the
local cloud keeps running.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import click

from ..config import load_project
from ..deploy.engine import Deployer
from ..deploy.targets import open_target
from ..errors import ShardkitError
from ..local import server
from ..local.watch import Watcher, project_paths
from ..logs import LogReader
from .deploy import project_arg
from .logs import print_event, shard_logs
from .main import error_line


class DevSession:
    """One project under ``shardkit dev``: its deployer, kept while shardkit.toml is unchanged
    (so a code change re-uses the map it built) and the local cloud is the same."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.deployer: Deployer | None = None
        self.reader = LogReader([], lambda service, region: None)

    def deploy(self, reload: bool) -> str:
        """Plan and apply; returns what happened, in a few words."""
        started = time.perf_counter()
        deployer = self._deployer(reload)
        if deployer.needs_restore():
            deployer.apply(deployer.plan_restore())
        plan = deployer.plan()
        if plan.is_noop:
            what = "no changes"
        else:
            result = deployer.apply(plan)
            what = f"{result.steps_done} steps"
        self.reader.retarget(shard_logs(deployer), deployer.target.aws.client)
        return f"{what} in {time.perf_counter() - started:.1f}s"

    def _deployer(self, reload: bool) -> Deployer:
        instance = server.status(self.root).get("instance")
        current = self.deployer
        if reload or current is None or current.target.instance != instance:
            project = load_project(self.root)
            current = Deployer(project, open_target(project, local=True, start=True))
            self.deployer = current
        return current


@click.command("dev")
@project_arg
@click.option("--no-logs", is_flag=True, help="Do not print the functions' logs.")
def dev_cmd(project_dir: Path, no_logs: bool) -> None:
    """Deploy PROJECT_DIR to the local cloud, redeploy on every save, print the logs."""
    root = project_dir.resolve()
    session = DevSession(root)
    click.echo(f"dev: deployed {session.deploy(reload=True)}")
    code = session.deployer.project.config.proxy.code if session.deployer else "app"
    watcher = Watcher(project_paths(root, code))
    stop = threading.Event()
    if not no_logs:
        threading.Thread(target=_print_logs, args=(session.reader, stop), daemon=True).start()
    click.echo(f"dev: watching {', '.join(_shown(root, p) for p in watcher.paths)} (Ctrl-C stops)")
    try:
        while True:
            changed = watcher.wait()
            names = ", ".join(_shown(root, p) for p in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            try:
                reload = any(p.name == "shardkit.toml" for p in changed)
                click.echo(f"dev: {names}{more} changed; deployed {session.deploy(reload)}")
            except ShardkitError as exc:
                click.echo(f"dev: not deployed: {error_line(exc)}; the last deployment serves")
    except KeyboardInterrupt:
        stop.set()
        click.echo(
            f"dev: stopped watching; the local cloud keeps running "
            f"(`shardkit local down {project_dir}` stops it)"
        )


def _print_logs(reader: LogReader, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for event in reader.follow(time.time(), interval=0.5, stop=stop.is_set):
                print_event(event, as_json=False)
        except Exception as exc:  # the local cloud restarting: keep following
            click.echo(f"dev: logs unavailable for now ({type(exc).__name__}: {exc})")
            stop.wait(1.0)


def _shown(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
