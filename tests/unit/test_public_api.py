"""The public API surface: ``shardkit.__all__``, lazy imports, and the error hierarchy.

What importing it loads, in a fresh interpreter: tests/integration/test_public_api_imports.py.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re

import pytest

import shardkit
import shardkit.errors as errors

ERRORS = [getattr(errors, name) for name in errors.__all__]


def test_all_is_sorted_and_unique() -> None:
    assert shardkit.__all__ == sorted(shardkit.__all__)
    assert len(set(shardkit.__all__)) == len(shardkit.__all__)


@pytest.mark.parametrize("name", shardkit.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(shardkit, name)
    assert value is not None
    if name != "__version__":
        assert value.__module__.startswith("shardkit."), value.__module__
        assert name in dir(shardkit)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'shardkit' has no attribute 'nope'"):
        shardkit.nope  # noqa: B018


def test_version_is_the_installed_distribution_version() -> None:
    assert shardkit.__version__ == importlib.metadata.version("shardkit")


def test_errors_all_is_sorted_and_complete() -> None:
    assert errors.__all__ == sorted(errors.__all__)
    defined = {
        n
        for n, v in vars(errors).items()
        if inspect.isclass(v) and issubclass(v, Exception) and v.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


def test_errors_exported_by_shardkit_are_the_same_classes() -> None:
    exported = [n for n in shardkit.__all__ if n.endswith("Error")]
    assert exported  # the package does export its errors
    for name in exported:
        assert getattr(shardkit, name) is getattr(errors, name)


def test_every_error_a_caller_can_meet_is_exported_by_shardkit() -> None:
    """A user catches what shardkit raises as ``shardkit.XError``, without knowing which module
    defines it: every class of the hierarchy is exported by the package."""
    exported = {n for n in shardkit.__all__ if n.endswith("Error")}
    assert set(errors.__all__) - exported == set()


def _instance(cls: type[errors.ShardkitError], hint: str | None = None) -> errors.ShardkitError:
    if issubclass(cls, errors.ConfigError):
        return cls("shardkit.toml", ["a.b = 1: must be 2"], hint=hint)
    return cls("something went wrong", hint=hint)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_a_shardkit_error_with_a_hint(cls: type[errors.ShardkitError]) -> None:
    assert issubclass(cls, errors.ShardkitError)
    assert cls.__doc__ and cls.__doc__.strip()
    given = _instance(cls, hint="do this instead")
    assert given.hint == "do this instead"
    default = _instance(cls)
    assert isinstance(default.hint, str)
    # an error either has its own default hint or leaves it to the raiser; never a blank one
    assert default.hint == "" or default.hint.strip()
    assert default.message in str(default)


def test_config_error_has_a_default_hint_and_joins_problems() -> None:
    exc = errors.ConfigError("x/shardkit.toml", ["a = 1: bad", "b = 2: worse"])
    assert str(exc) == "x/shardkit.toml: a = 1: bad; b = 2: worse"
    assert exc.message == str(exc)
    assert (exc.file, exc.problems) == ("x/shardkit.toml", ["a = 1: bad", "b = 2: worse"])
    assert exc.hint


def test_map_errors_have_default_hints() -> None:
    for cls in (
        errors.MapDecodeError,
        errors.MapSignatureError,
        errors.MapRollbackError,
        errors.MapExpiredError,
        errors.NoEligibleShardError,
    ):
        assert cls("m").hint.strip(), cls


def test_docstring_tree_matches_the_class_hierarchy() -> None:
    """The hierarchy drawn in ``shardkit.errors``'s docstring is the real one."""
    doc = errors.__doc__ or ""
    parents: dict[int, str] = {}
    drawn: dict[str, str | None] = {}
    for line in doc.splitlines():
        match = re.match(r"^([\s│├└─]*)([A-Z]\w+Error)\b", line)
        if not match:
            continue
        depth = len(match.group(1)) // 4
        name = match.group(2)
        parents[depth] = name
        drawn[name] = parents.get(depth - 1) if depth > 1 else None
    assert set(drawn) == set(errors.__all__)
    for name, parent in drawn.items():
        cls = getattr(errors, name)
        expected = Exception if parent is None else getattr(errors, parent)
        assert cls.__bases__ == (expected,), (name, cls.__bases__, parent)
