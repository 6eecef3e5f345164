"""The quickstart's edge side: a local model for the common reads, and the cache policies.

``shardkit traffic examples/quickstart --edge`` loads this module (``local_model()`` and
``cache_rules()``); your own edge code does the same with :class:`shardkit.edge.EdgeRuntime`.

* **Local model.** The shards answer from the key's own bigrams first, then the shared prior. Many
  words have one overwhelmingly likely successor in the prior ("says" -> "which"); for a
  read-only request (``"learn": false``) ending in such a word, the edge answers from the prior
  itself, with the prior's confidence as its claim. It never claims a learning request: that one
  must reach the shard, or its write would be lost. Trade-off, on purpose: a key whose own counts
  disagree with the prior gets the prior's answer (``"source": "edge"``) for those words.
* **Cache.** Only read-only requests are cacheable (a learning request changes the key's answers
  and, passing through the edge, drops the key's cached ones). Keys of the ``eu`` jurisdiction
  are cached only by an edge node located in ``eu``; ``us`` keys by any node.
"""

from __future__ import annotations

from typing import Any

from shardkit.edge import CachePolicy, CacheRules, EdgeRequest, payload_field

from .model import _WORD, PRIOR, predict

__all__ = ["PriorModel", "cache_rules", "local_model"]

read_only = payload_field("learn", False)


class PriorModel:
    """The shared bigram prior, answering read-only requests whose last word it is sure about."""

    def __init__(self) -> None:
        # Precomputed once: a claim is then one regex and one dict lookup.
        self._best = {word: predict(word) for word in PRIOR}

    def can_serve(self, request: EdgeRequest) -> float:
        last = _last_word(request.payload) if read_only(request.payload) else None
        best = self._best.get(last) if last else None
        return float(best["confidence"]) if best else 0.0

    def predict(self, request: EdgeRequest) -> dict[str, Any]:
        best = self._best[_last_word(request.payload)]  # type: ignore[index]
        return {
            "next": best["next"],
            "confidence": best["confidence"],
            "source": "edge",
            "count": None,
        }


def _last_word(payload: Any) -> str | None:
    text = payload.get("text", "")
    words = _WORD.findall(text.lower()) if isinstance(text, str) else []
    return words[-1] if words else None


def local_model() -> PriorModel:
    return PriorModel()


def cache_rules() -> CacheRules:
    """Reads cached 30 s (5 s more while revalidating, 5 min if the shard is down).

    ``resident_only`` is checked against the key's jurisdiction as the map resolves it (prefix
    rule or tag), not against the pattern, so an ``eu`` key can never slip through as "*".
    """
    return CacheRules(
        [
            CachePolicy(
                "*",
                ttl_s=30.0,
                max_stale_s=5.0,
                stale_if_error_s=300.0,
                max_entry_bytes=4096,
                cacheable=read_only,
                resident_only={"eu"},
            ),
        ]
    )
