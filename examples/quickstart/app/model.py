"""A small, real model for the quickstart: next-word prediction that adapts to each key.

A bigram model trained on a tiny built-in corpus is the shared prior; every key (a user, a
tenant) keeps its own bigram counts as state, so its predictions drift towards what that key
writes. Nothing is fetched at run time.

Request payload: ``{"text": "the words so far", "seq": 17}`` (``seq`` is optional; the state
records it so a test can prove that no write was lost or applied twice).
Answer: ``{"next": word or None, "confidence": 0..1, "source": "key"|"prior"|"none", "count": n}``.

``"learn": false`` makes the request read-only: the same prediction, but the key's state is not
changed (``new_state`` is None, so the proxy writes nothing, and ``count``/``seqs`` stay as they
are). Read-only answers change only when the key is written, which is what makes them cacheable
at the edge (see ``app/edge.py`` and docs/edge.md).

The proxy calls ``infer(key, payload, state) -> (answer, new_state)``.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import Any

CORPUS = """
the shard owns the key and the key stays in its region
the map says which shard owns the key
a request for the key goes to the shard that owns it
the shard keeps the state of the key warm between requests
when a shard is hot the map moves some of its slots to a new shard
the client routes the key with the map and the shard answers
the edge answers from the cache when it can and asks the shard when it must
"""

_WORD = re.compile(r"[a-z0-9']+")
MAX_WORDS = 2000  # per key: the state stays small however long a key lives
MAX_SEQS = 256


def _train(text: str) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = {}
    for line in text.strip().splitlines():
        words = _WORD.findall(line.lower())
        for a, b in itertools.pairwise(words):
            table.setdefault(a, Counter())[b] += 1
    return table


PRIOR = _train(CORPUS)


def predict(last: str, own: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """The most likely next word after ``last``: the key's own counts first, then the prior."""
    for source, table in (("key", own or {}), ("prior", PRIOR)):
        counts = table.get(last)
        if counts:
            word, n = max(sorted(counts.items()), key=lambda kv: kv[1])
            return {
                "next": word,
                "confidence": round(n / sum(counts.values()), 4),
                "source": source,
            }
    return {"next": None, "confidence": 0.0, "source": "none"}


def infer(key: str, payload: Any, state: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if not isinstance(payload, dict) or not isinstance(payload.get("text", ""), str):
        raise ValueError("payload must be an object with a 'text' string")
    if not isinstance(payload.get("learn", True), bool):
        raise ValueError("'learn' must be true or false")
    words = _WORD.findall(payload.get("text", "").lower())
    state = state or {"bigrams": {}, "count": 0, "seqs": [], "words": 0}
    answer = predict(words[-1], state["bigrams"]) if words else predict("")
    if payload.get("learn", True) is False:
        answer["count"] = state["count"]
        return answer, None  # read-only: nothing to write
    learn(state, words)
    state["count"] += 1
    if "seq" in payload:
        state["seqs"] = (state["seqs"] + [payload["seq"]])[-MAX_SEQS:]
    answer["count"] = state["count"]
    return answer, state


def learn(state: dict[str, Any], words: list[str]) -> None:
    """Add the text's bigrams to the key's own counts, within the per-key word budget."""
    for a, b in itertools.pairwise(words):
        if state["words"] >= MAX_WORDS:
            return
        row = state["bigrams"].setdefault(a, {})
        row[b] = row.get(b, 0) + 1
        state["words"] += 1
