"""Load ``shardkit.toml`` into a :class:`ProjectConfig`, or fail with one line per problem.

Every problem names the file, the field path, the bad value and what is allowed, e.g.::

    examples/bad/shardkit.toml: groups.eu.replicas = -1: must be >= 0
"""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .models import ProjectConfig

__all__ = ["CONFIG_FILE", "Project", "load_config", "load_project"]

CONFIG_FILE = "shardkit.toml"


@dataclass(frozen=True)
class Project:
    """A project directory and its validated configuration."""

    root: Path
    config: ProjectConfig

    @property
    def state_dir(self) -> Path:
        """Where shardkit keeps this project's own state (maps, keys, deploy records)."""
        return self.root / ".shardkit"

    @property
    def keys_dir(self) -> Path:
        return self.root / self.config.signing.keys_dir

    @property
    def map_path(self) -> Path:
        return self.state_dir / "map.skm"


def load_project(directory: str | os.PathLike[str]) -> Project:
    """Load the project in ``directory`` (which holds ``shardkit.toml``)."""
    root = Path(directory)
    if root.is_file() and root.name == CONFIG_FILE:
        root = root.parent
    if not root.is_dir():
        raise ConfigError(str(root), ["no such project directory"],
                          hint="pass the directory that holds shardkit.toml")
    return Project(root=root, config=load_config(root / CONFIG_FILE))


def load_config(path: str | os.PathLike[str]) -> ProjectConfig:
    """Parse and validate one ``shardkit.toml``."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, ["file not found"],
                          hint="create shardkit.toml (see examples/quickstart)") from None
    except OSError as exc:
        raise ConfigError(file, [f"cannot be read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(file, [f"not UTF-8 text (byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [f"invalid TOML: {exc}"],
                          hint="fix the TOML syntax at the line and column named") from None
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, _problems(exc)) from None


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        path = _path(loc)
        if err["type"] == "missing":
            problems.append(f"{path}: required field is missing")
        elif err["type"] == "extra_forbidden":
            allowed = _allowed(loc[:-1])
            problems.append(f"{path}: unknown field; allowed here: {', '.join(allowed)}")
        elif not loc:
            problems.extend(msg.splitlines())
        else:
            problems.append(f"{path} = {_show(err.get('input'))}: {msg}")
    return problems


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in ("int", "tuple[ShardConfig, ...]"):
            continue  # pydantic's union-branch markers are not part of the user's path
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(loc: tuple[Any, ...]) -> list[str]:
    """The field names a model at ``loc`` accepts (for 'unknown field' errors)."""
    current: Any = ProjectConfig
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field else None
        else:
            current = _element(current)
        current = _model_in(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return ["(none)"]


def _element(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[-1] if typing.get_origin(annotation) is dict else (args[0] if args else None)


def _model_in(annotation: Any) -> Any:
    """Unwrap Optional/Union/Annotated down to a model class when there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, typing.Annotated) or str(origin) == "<class 'types.UnionType'>":
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation
