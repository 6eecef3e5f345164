"""Fixtures for the functional tier: AWS emulated in-process by moto, projects in tmp_path.

* ``moto`` - dummy credentials and a fresh ``mock_aws`` (Lambda API without Docker) per test;
* ``recorder`` - wraps the client factory handed to :class:`Aws`, so every API call any client
  makes is recorded by a botocore event handler (independently of the facade's own counter),
  and chosen calls can be made to fail with a botocore ``ClientError``;
* ``make_project`` / ``rewrite`` / ``small_config`` - quickstart copies (or smaller variants) in ``tmp_path``;
* ``deployer`` - ``Deployer(project, identify(Aws(factory), "aws"))``, one target per test;
* ``shardkit_cli`` - the ``shardkit`` command in-process: ``(exit code, stdout, stderr)``.
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore import xform_name
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from moto import mock_aws

from shardkit.aws.facade import Aws, ClientFactory, boto3_factory
from shardkit.config import Project, load_project
from shardkit.deploy.engine import Deployer, Target
from shardkit.deploy.targets import identify

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "shardkit.toml"
READ_VERBS = ("get", "list", "describe", "head", "query", "scan")


# -- AWS -------------------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials; nothing from the machine's AWS configuration leaks in."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def moto(aws_env: None) -> Iterator[None]:
    with mock_aws(config={"lambda": {"use_docker": False}}):
        yield


@dataclass(frozen=True)
class Call:
    service: str
    region: str
    operation: str  # snake_case, as the facade names it
    params: dict[str, Any]

    @property
    def mutating(self) -> bool:
        """Decided here, not by the facade: anything but a get/list/describe/head/query/scan
        call (a transactional or batched get included)."""
        verb = self.operation.removeprefix("transact_").removeprefix("batch_")
        return verb.split("_", 1)[0] not in READ_VERBS


@dataclass
class _Fault:
    service: str
    operation: str
    code: str
    when: Callable[[Call], bool]
    times: int | None  # None: every time
    fired: int = 0


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


@dataclass
class Recorder:
    """Records every call of the clients it makes; raises injected faults."""

    calls: list[Call] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    http_hooks: list[tuple[str, str, Callable[..., Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, factory: ClientFactory) -> ClientFactory:
        def make(service: str, region: str) -> Any:
            client = factory(service, region)
            client.meta.events.register("before-parameter-build", self._handler(service, region))
            for hook_service, event, hook in self.http_hooks:
                if hook_service == service:
                    client.meta.events.register_first(event, hook)
            return client

        return make

    def _handler(self, service: str, region: str) -> Callable[..., None]:
        def on_call(params: dict[str, Any], model: Any, **_: Any) -> None:
            call = Call(service, region, xform_name(model.name), dict(params))
            with self._lock:
                self.calls.append(call)
                fault = self._fault_for(call)
            if fault is not None:
                raise ClientError(
                    {"Error": {"Code": fault.code, "Message": "injected by test"}}, model.name
                )

        return on_call

    def _fault_for(self, call: Call) -> _Fault | None:
        for fault in self.faults:
            if (fault.service, fault.operation) != (call.service, call.operation):
                continue
            if fault.times is not None and fault.fired >= fault.times:
                continue
            if fault.when(call):
                fault.fired += 1
                return fault
        return None

    def fail(
        self,
        service: str,
        operation: str,
        code: str,
        *,
        when: Callable[[Call], bool] = lambda call: True,
        times: int | None = 1,
    ) -> _Fault:
        fault = _Fault(service, operation, code, when, times)
        self.faults.append(fault)
        return fault

    def throttle_http(
        self,
        service: str,
        operation: str,
        *,
        times: int = 1,
        when: Callable[[Any], bool] = lambda request: True,
    ) -> list[str]:
        """Answer the next ``times`` HTTP requests of ``operation`` (CamelCase) that match
        ``when`` with a throttling error *below* botocore's retry handler, as AWS would; returns
        the log of matching attempts."""
        attempts: list[str] = []

        def on_send(request: Any, **_: Any) -> Any:
            if not when(request):
                return None
            attempts.append(request.url)
            if len(attempts) > times:
                return None  # let moto answer
            body = json.dumps({"__type": "ThrottlingException", "message": "slow down"}).encode()
            return AWSResponse(
                request.url, 400, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(body)
            )

        self.http_hooks.append((service, f"before-send.{service}.{operation}", on_send))
        return attempts

    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int) -> list[Call]:
        return self.calls[mark:]

    def mutating_since(self, mark: int) -> list[Call]:
        return [c for c in self.since(mark) if c.mutating]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def target(moto: None, recorder: Recorder) -> Target:
    return identify(Aws(recorder.wrap(boto3_factory()), target="aws"), "aws")


@pytest.fixture
def deployer(target: Target) -> Callable[[Project], Deployer]:
    """``deployer(project)``: a Deployer on this test's moto target (moto in-process runs no
    function, so a migration's prepare step warms none)."""
    return lambda project: Deployer(project, target, warm=False)


# -- projects --------------------------------------------------------------------------------


def quickstart() -> dict[str, Any]:
    data = tomllib.loads(QUICKSTART.read_text("utf-8"))
    data["project"]["target"] = "aws"
    return data


def small() -> dict[str, Any]:
    """The quickstart cut down to 2 regions x 2 shards per jurisdiction, no replicas, 256 slots
    per group (a first deploy writes a slot record per slot)."""
    data = quickstart()
    data["hashing"]["slot_bits"] = 8
    data["regions"] = {"eu-west-1": {"jurisdiction": "eu"}, "us-east-1": {"jurisdiction": "us"}}
    data["groups"]["eu"].update(regions=["eu-west-1"], shards=2, replicas=0)
    data["groups"]["us"].update(regions=["us-east-1"], shards=2, replicas=0)
    return data


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for a shardkit.toml: one [section] per top-level table, inline values."""
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{json.dumps(k)} = {_inline(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def _inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return json.dumps(value)


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Project]:
    """``make_project(config=None, dirname="proj")``: a project directory in tmp_path holding
    ``config`` (default: the small variant) and the quickstart's code (a plan imports the
    handler from the package it builds); the quickstart itself with ``config="quickstart"``."""

    def make(config: dict[str, Any] | str | None = None, dirname: str = "proj") -> Project:
        root = tmp_path / dirname
        root.mkdir()
        shutil.copytree(QUICKSTART.parent / "app", root / "app")
        if config == "quickstart":
            (root / "shardkit.toml").write_text(QUICKSTART.read_text("utf-8"))
        else:
            (root / "shardkit.toml").write_text(to_toml(copy.deepcopy(config or small())))
        return load_project(root)

    return make


@pytest.fixture
def small_config() -> dict[str, Any]:
    """A fresh copy of the small variant's configuration, to change before ``make_project``."""
    return small()


@pytest.fixture
def rewrite() -> Callable[[Project, Callable[[dict[str, Any]], None]], Project]:
    """``rewrite(project, change)``: apply ``change`` to the project's configuration dict, write
    it back, and return the reloaded project."""

    def apply(project: Project, change: Callable[[dict[str, Any]], None]) -> Project:
        path = project.root / "shardkit.toml"
        data = tomllib.loads(path.read_text("utf-8"))
        change(data)
        path.write_text(to_toml(data))
        return load_project(project.root)

    return apply


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def shardkit_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    """``shardkit_cli(*args)``: run ``shardkit ARGS`` in-process (as its console entry point
    does); its exit code, stdout and stderr. Tables are never wrapped, whatever the terminal
    (or $COLUMNS) of the test run, as when the output is piped."""
    from shardkit.cli.main import main
    from shardkit.cli.output import console

    monkeypatch.setattr(console, "width", 10_000)

    def run(*args: str | Path) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
