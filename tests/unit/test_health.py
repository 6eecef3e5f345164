"""``shardkit status``'s verdict: ``ok`` only when nothing at all is wrong; every problem named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardkit.deploy.health import STATUSES, Observed, assess

DEPLOYED = Observed(recorded="ok", deployment=3, resources=40)


def test_a_deployment_with_nothing_wrong_is_ok() -> None:
    assert assess(DEPLOYED) == ("ok", [])


def test_nothing_ever_deployed_is_said_so() -> None:
    assert assess(Observed(recorded="empty", deployment=0, resources=0)) == (
        "nothing deployed",
        [],
    )


def test_a_destroyed_deployment_is_destroyed_unless_a_registry_still_serves_its_map() -> None:
    destroyed = Observed(recorded="destroyed", deployment=4, resources=2)
    assert assess(destroyed) == ("destroyed", [])
    status, problems = assess(Observed("destroyed", 4, 2, stale_registries=["eu-west-1"]))
    assert status == "drifted" and "eu-west-1" in problems[0] and "still serve" in problems[0]


@pytest.mark.parametrize(
    ("seen", "status", "named"),
    [
        (Observed("ok", 3, 40, missing=["us-east-1/lambda_function/f"]), "drifted", "f"),
        (Observed("ok", 3, 40, stale_registries=["us-east-1"]), "drifted", "us-east-1"),
        (Observed("ok", 3, 40, unnamed=["eu-2"]), "drifted", "eu-2"),
        (Observed("ok", 3, 40, map_problem="the map is bad"), "drifted", "the map is bad"),
        (Observed("ok", 3, 40, restarted=True), "drifted", "restarted"),
        (Observed("ok", 3, 40, pending=["abc123"]), "failed", "abc123"),
        (Observed("failed", 3, 40), "failed", "did not finish"),
        (Observed("applying", 3, 40), "failed", "did not finish"),
        (Observed("empty", 0, 0, pending=["abc123"]), "failed", "abc123"),
    ],
)
def test_anything_wrong_is_not_ok_and_is_named(seen: Observed, status: str, named: str) -> None:
    got, problems = assess(seen)
    assert got == status
    assert any(named in p for p in problems), problems


@given(
    recorded=st.sampled_from(["empty", "ok", "applying", "failed", "destroyed"]),
    missing=st.lists(st.text(min_size=1), max_size=3),
    pending=st.lists(st.text(min_size=1), max_size=2),
    restarted=st.booleans(),
    map_problem=st.sampled_from(["", "unreadable"]),
    stale=st.lists(st.sampled_from(["eu-west-1", "us-east-1"]), max_size=2),
    unnamed=st.lists(st.text(min_size=1), max_size=2),
)
def test_ok_or_destroyed_only_without_problems(
    recorded: str,
    missing: list[str],
    pending: list[str],
    restarted: bool,
    map_problem: str,
    stale: list[str],
    unnamed: list[str],
) -> None:
    seen = Observed(recorded, 1, 5, missing, pending, restarted, map_problem, stale, unnamed)
    status, problems = assess(seen)
    assert status in STATUSES
    if status in ("ok", "destroyed"):
        assert not problems and recorded not in ("failed", "applying")
    if not problems and recorded in ("ok", "destroyed"):
        assert status == recorded
