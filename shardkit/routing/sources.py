"""Where a client reads the signed map from: a file, a URL, or the deployed registry (S3).

``map_source(spec)`` turns ``/path/map.skm``, ``https://host/map.skm`` or
``s3://bucket/registry/map.skm`` into a fetch function for :class:`MapHolder`. Whatever the
source, the bytes are only trusted after the holder verified them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import MapError

__all__ = ["map_source"]

Fetch = Callable[[], bytes]


def map_source(spec: str, *, s3_client: Any = None, timeout: float = 5.0) -> Fetch:
    """A fetch function for ``spec``: a file path, an http(s) URL, or an ``s3://`` URI."""
    if spec.startswith(("http://", "https://")):
        return _url(spec, timeout)
    if spec.startswith("s3://"):
        return _s3(spec, s3_client)
    return _file(Path(spec))


def _file(path: Path) -> Fetch:
    def fetch() -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise MapError(f"cannot read the map at {path}: {exc.strerror}") from None

    return fetch


def _url(url: str, timeout: float) -> Fetch:
    def fetch() -> bytes:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return bytes(resp.read())
        except (urllib.error.URLError, OSError) as exc:
            raise MapError(
                f"cannot fetch the map from {url}: {exc}",
                hint="the last good map stays in force until it expires",
            ) from None

    return fetch


def _s3(uri: str, client: Any) -> Fetch:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise MapError(f"{uri!r} is not s3://BUCKET/KEY", hint="e.g. s3://bucket/registry/map.skm")

    def fetch() -> bytes:
        nonlocal client
        if client is None:
            import boto3

            client = boto3.client("s3")
        try:
            return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except Exception as exc:  # botocore's errors: the holder keeps the last good map
            raise MapError(
                f"cannot fetch the map from {uri}: {exc}",
                hint="the last good map stays in force until it expires",
            ) from None

    return fetch
