"""Load ``shardkit.toml`` into a :class:`ProjectConfig`, or fail with one line per problem.

Every problem names the file, the field path, the bad value and what is allowed, e.g.::

    examples/bad/shardkit.toml: groups.eu.replicas = -1: must be >= 0
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .models import (
    PATTERN_WORDS,
    SHARDS_FORMS,
    AutoshardConfig,
    ProjectConfig,
    check_autoshard,
)

__all__ = ["CONFIG_FILE", "Project", "load_config", "load_project", "validate_autoshard"]

CONFIG_FILE = "shardkit.toml"

# pydantic messages that name Python types, in the words of a TOML file
_TYPE_WORDS = {
    "model_type": "must be a table, like [section] or { key = value }",
    "model_attributes_type": "must be a table, like [section] or { key = value }",
    "dict_type": "must be a table, like [section] or { key = value }",
    "tuple_type": "must be an array, like [a, b]",
}


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
        raise ConfigError(
            str(root),
            ["no such project directory"],
            hint="pass the directory that holds shardkit.toml",
        )
    return Project(root=root, config=load_config(root / CONFIG_FILE))


def load_config(path: str | os.PathLike[str]) -> ProjectConfig:
    """Parse and validate one ``shardkit.toml``."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            file, ["file not found"], hint="create shardkit.toml (see examples/quickstart)"
        ) from None
    except OSError as exc:
        raise ConfigError(file, [f"cannot be read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            file,
            [f"not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset {exc.start})"],
            hint="save the file as UTF-8",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            file, [f"invalid TOML: {exc}"], hint="fix the TOML syntax at the line and column named"
        ) from None
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, _problems(exc)) from None


def validate_autoshard(data: dict[str, Any], where: str) -> AutoshardConfig:
    """An autoshard table given outside a file (``--policy key=value`` overrides), checked as
    the file's would be; problems are named ``autoshard.<field>``."""
    try:
        policy = AutoshardConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(where, [f"autoshard.{p}" for p in _problems(exc)]) from None
    problems = check_autoshard("", policy, policy.min_shards)
    if problems:
        raise ConfigError(where, problems)
    return policy


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        loc = _user_loc(tuple(err["loc"]))
        path = _path(loc)
        if err["type"] == "missing":
            problems.append(f"{path}: required field is missing")
        elif err["type"] == "extra_forbidden":
            allowed = _allowed(loc[:-1])
            problems.append(f"{path}: unknown field; allowed here: {', '.join(allowed)}")
        elif not loc:
            problems.extend(_message(err).splitlines())
        elif err["loc"][-1] == "[key]":  # a bad table key: the key is the value
            problems.append(f"{_path(loc[:-1])}: key {_show(err.get('input'))}: {_message(err)}")
        else:
            problems.append(f"{path} = {_show(err.get('input'))}: {_message(err)}")
    return problems


def _message(err: Any) -> str:
    """pydantic's message, with regexes and Python type names put in words."""
    pattern = (err.get("ctx") or {}).get("pattern")
    if err["type"] == "string_pattern_mismatch" and pattern in PATTERN_WORDS:
        return f"must be {PATTERN_WORDS[pattern]}"
    return _TYPE_WORDS.get(err["type"], str(err["msg"]).removeprefix("Value error, "))


def _user_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without pydantic's markers: the union branch after ``shards``, and ``[key]``."""
    return tuple(
        part
        for i, part in enumerate(loc)
        if part != "[key]" and not (i and loc[i - 1] == "shards" and part in SHARDS_FORMS)
    )


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(file)"


def _show(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else repr(value)  # TOML's true/false
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(loc: tuple[Any, ...]) -> list[str]:
    """The field names the model at ``loc`` accepts (for 'unknown field' errors)."""
    current: Any = ProjectConfig
    for part in loc:
        current = _child(current, part)
    models = [t for t in _options(current) if _is_model(t)]
    return sorted(models[0].model_fields) if models else ["(none)"]


def _child(annotation: Any, part: Any) -> Any:
    """The annotation of field, key or index ``part`` inside ``annotation``."""
    for option in _options(annotation):
        origin, args = typing.get_origin(option), typing.get_args(option)
        if _is_model(option) and str(part) in option.model_fields:
            return option.model_fields[str(part)].annotation
        if origin is dict and isinstance(part, str):
            return args[1]
        if origin in (tuple, list) and isinstance(part, int):
            return args[0]
    return None


def _options(annotation: Any) -> list[Any]:
    """``annotation`` with Annotated unwrapped and unions split into their branches."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _options(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [o for arg in typing.get_args(annotation) for o in _options(arg)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
