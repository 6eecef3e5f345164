"""routes.json: what the deploy engine hands the local cloud, and the watch that re-reads it."""

from __future__ import annotations

from pathlib import Path

from shardkit.local.routes import Routes, RoutesWatch, publish, published

URL = "https://abc.lambda-url.eu-west-1.on.aws/"


def routes(version: str) -> Routes:
    return Routes(
        urls={URL: ("eu-west-1", "fn-eu-0", "live")},
        code={("eu-west-1", "fn-eu-0"): (version, "bucket", f"artifacts/{version}.zip")},
    )


def test_the_watch_serves_nothing_until_published_then_each_publish(tmp_path: Path) -> None:
    watch = RoutesWatch(tmp_path)
    assert watch.current() == Routes() and not published(tmp_path)
    publish(tmp_path, routes("aaa"))
    assert watch.current() == routes("aaa") and published(tmp_path)
    publish(tmp_path, routes("bbb"))  # at once: within one mtime tick on a coarse clock
    assert watch.current() == routes("bbb")
    assert watch.current() is watch.current()  # unchanged: not read again


def test_a_code_package_is_found_only_by_its_hash(tmp_path: Path) -> None:
    found = routes("aaa")
    assert found.code_location("eu-west-1", "fn-eu-0", "aaa") == ("bucket", "artifacts/aaa.zip")
    assert found.code_location("eu-west-1", "fn-eu-0", "bbb") is None
    assert found.code_location("us-east-1", "fn-eu-0", "aaa") is None


def test_an_unreadable_or_foreign_file_serves_nothing(tmp_path: Path) -> None:
    publish(tmp_path, routes("aaa"))
    path = tmp_path / ".shardkit" / "local" / "routes.json"
    for text in ("{not json", '{"format": "shardkit-local-routes/9", "urls": {}, "code": []}'):
        path.write_text(text)
        assert RoutesWatch(tmp_path).current() == Routes()
