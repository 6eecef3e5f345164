"""The quickstart's own tests: its model, deployed to an isolated local cloud.

They use shardkit's pytest fixtures (``shardkit.testing``, registered with shardkit): the project
is ``shardkit_project`` in pyproject.toml's ``[tool.pytest.ini_options]``, here the quickstart.
Run them with ``pytest examples/quickstart/tests``.
"""

from __future__ import annotations

import uuid


def _key(prefix: str = "") -> str:
    return f"{prefix}user-{uuid.uuid4().hex[:8]}"


def test_a_key_learns_its_own_next_word(shardkit_client) -> None:
    key = _key()
    first = shardkit_client.infer(key, {"text": "the cat sat"})
    assert first.answer["source"] == "none" and first.answer["count"] == 1
    again = shardkit_client.infer(key, {"text": "the cat"})
    assert again.answer == {"next": "sat", "confidence": 1.0, "source": "key", "count": 2}
    assert again.seq == first.seq + 1


def test_eu_keys_stay_in_eu_regions(shardkit_client) -> None:
    eu = shardkit_client.infer(_key("eu:"), {"text": "the map"})
    us = shardkit_client.infer(_key(), {"text": "the map"})
    assert eu.jurisdiction == "eu" and eu.region in ("eu-west-1", "eu-central-1")
    assert us.jurisdiction == "us" and us.region in ("us-east-1", "us-west-2")
    assert eu.answer == us.answer and eu.answer["source"] == "prior"  # the shared prior


def test_a_read_only_request_writes_nothing(shardkit_client) -> None:
    key = _key()
    written = shardkit_client.infer(key, {"text": "a b"})
    read = shardkit_client.infer(key, {"text": "a", "learn": False})
    assert read.answer == {"next": "b", "confidence": 1.0, "source": "key", "count": 1}
    assert read.seq == written.seq  # no new write
