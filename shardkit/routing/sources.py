"""Where a client reads the signed map from: a file, a URL, or the deployed registry (S3).

``map_source(spec)`` turns ``/path/map.skm``, ``file:///path/map.skm``, ``https://host/map.skm``
or ``s3://bucket/registry/map.skm`` into a fetch function for :class:`MapHolder`. Whatever the
source, the bytes are only trusted after the holder verified them.

A fetch that cannot read its source raises :class:`RegistryUnreachableError` naming the source
and the cause - never a :class:`MapError`, which means a map was *refused* - so offline mode
(the last good map stays in force) is told apart from a bad map. A ``spec`` that is not a
source at all is a :class:`MapError` at once, before any fetch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import MapError, RegistryUnreachableError

__all__ = ["map_source"]

Fetch = Callable[[], bytes]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_KEEPS = "the last good map stays in force until it expires"


def map_source(spec: str, *, s3_client: Any = None, timeout: float = 5.0) -> Fetch:
    """A fetch function for ``spec``: a file path or ``file://`` URI, an http(s) URL, or an
    ``s3://BUCKET/KEY`` URI (read with ``s3_client``, default a boto3 client made at the first
    fetch)."""
    scheme = _SCHEME.match(spec)
    if scheme is None:
        return _file(Path(spec))
    name = scheme.group(1).lower()
    if name in ("http", "https"):
        return _url(spec, timeout)
    if name == "s3":
        return _s3(spec, s3_client)
    if name == "file":
        return _file(_file_path(spec))
    raise MapError(
        f"map source {spec!r}: the scheme {name!r} is not supported",
        hint="use a file path, file:///path, http(s)://host/path or s3://bucket/key",
    )


def _file_path(uri: str) -> Path:
    """The local path of a ``file:`` URI (RFC 8089): ``file:///abs/path`` or
    ``file://localhost/abs/path``, percent-escapes decoded."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise MapError(
            f"map source {uri!r} is not a local file URI",
            hint="write file:///absolute/path (three slashes), or just the path",
        )
    return Path(url2pathname(parts.path))


def _file(path: Path) -> Fetch:
    def fetch() -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise RegistryUnreachableError(
                f"cannot read the map at {path}: {exc.strerror or exc}",
                hint=f"check the path and its permissions; {_KEEPS}",
            ) from None

    return fetch


def _url(url: str, timeout: float) -> Fetch:
    def fetch() -> bytes:
        import http.client
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return bytes(resp.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise RegistryUnreachableError(
                f"cannot fetch the map from {url}: {exc}",
                hint=f"check the URL and that this host can reach it; {_KEEPS}",
            ) from None

    return fetch


def _s3(uri: str, client: Any) -> Fetch:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise MapError(f"{uri!r} is not s3://BUCKET/KEY", hint="e.g. s3://bucket/registry/map.skm")

    def fetch() -> bytes:
        nonlocal client
        try:
            if client is None:
                import boto3

                client = boto3.client("s3")
            return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except Exception as exc:  # botocore's errors, and the connection's
            raise RegistryUnreachableError(
                f"cannot fetch the map from {uri}: {_s3_problem(exc)}", hint=_s3_hint(exc)
            ) from None

    return fetch


def _s3_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)  # a botocore ClientError
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _s3_problem(exc: Exception) -> str:
    code = _s3_code(exc)
    return f"{code} ({exc})" if code else f"{type(exc).__name__}: {exc}"


def _s3_hint(exc: Exception) -> str:
    code = _s3_code(exc)
    if code in ("NoSuchKey", "NoSuchBucket", "404"):
        return f"nothing is published there: check the URI, or deploy the project; {_KEEPS}"
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "ExpiredToken"):
        return f"check that the AWS credentials allow s3:GetObject on it; {_KEEPS}"
    return f"check the network and the AWS credentials; {_KEEPS}"
