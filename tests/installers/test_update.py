"""The update check against a real HTTP server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from qhybrid.runtime.update import (
    DEFAULT_FEED_URL,
    FEED_ENV,
    UpdateCheckError,
    check_for_update,
    feed_url,
    parse_feed,
    version_key,
)


class _Feed:
    """A local feed server: ``body``/``status`` say what the next requests get."""

    def __init__(self) -> None:
        self.body = b"[]"
        self.status = 200
        self.delay = threading.Event()  # set: answer at once; clear: hang until set
        self.delay.set()
        self.requests = 0
        feed = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                feed.requests += 1
                feed.delay.wait(10)
                self.send_response(feed.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(feed.body)))
                self.end_headers()
                self.wfile.write(feed.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/releases"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def releases(self, *items: dict[str, object]) -> None:
        self.body = json.dumps(list(items)).encode()


@pytest.fixture
def feed() -> Iterator[_Feed]:
    server = _Feed()
    server.thread.start()
    try:
        yield server
    finally:
        server.delay.set()
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(10)


def _release(tag: str, **extra: object) -> dict[str, object]:
    return {"tag_name": tag, "html_url": f"https://example.invalid/{tag}", **extra}


def test_a_newer_release_is_reported_with_its_page(feed: _Feed) -> None:
    feed.releases(_release("v0.2.0"), _release("v0.10.0"), _release("v0.9.1"))
    info = check_for_update(feed.url, current="0.9.1")
    assert info.newer
    assert info.latest == "0.10.0"  # numeric order, not text order
    assert info.url == "https://example.invalid/v0.10.0"
    assert feed.requests == 1


def test_the_same_or_an_older_release_is_not_an_update(feed: _Feed) -> None:
    feed.releases(_release("v0.2.0"), _release("v0.1.0"))
    assert not check_for_update(feed.url, current="0.2.0").newer
    assert not check_for_update(feed.url, current="0.3.0.dev4+gabc123").newer


def test_prereleases_and_drafts_only_count_when_they_should(feed: _Feed) -> None:
    feed.releases(
        _release("v0.3.0rc1", prerelease=True), _release("v0.4.0", draft=True), _release("v0.2.0")
    )
    assert not check_for_update(feed.url, current="0.2.0").newer
    info = check_for_update(feed.url, current="0.2.0", include_prereleases=True)
    assert (info.newer, info.latest) == (True, "0.3.0rc1")
    # A development build is already off the release track: it hears of pre-releases.
    assert check_for_update(feed.url, current="0.2.1.dev3+g1234").latest == "0.3.0rc1"


def test_githubs_latest_release_object_is_understood(feed: _Feed) -> None:
    feed.body = json.dumps(_release("v1.0.0")).encode()
    assert check_for_update(feed.url, current="0.9").newer


def test_an_http_error_names_the_feed_and_the_status(feed: _Feed) -> None:
    feed.status = 404
    with pytest.raises(UpdateCheckError, match=r"127\.0\.0\.1.*HTTP 404"):
        check_for_update(feed.url, current="0.1.0")


def test_a_broken_feed_is_an_error_not_a_traceback(feed: _Feed) -> None:
    feed.body = b"<html>not json"
    with pytest.raises(UpdateCheckError, match="not JSON"):
        check_for_update(feed.url, current="0.1.0")
    feed.body = b'[{"name": "no tag"}]'
    with pytest.raises(UpdateCheckError, match="tag_name"):
        check_for_update(feed.url, current="0.1.0")


def test_a_feed_that_hangs_is_given_up_after_the_timeout(feed: _Feed) -> None:
    feed.delay.clear()
    with pytest.raises(UpdateCheckError, match="timed out"):
        check_for_update(feed.url, current="0.1.0", timeout=0.5)


def test_a_server_that_is_not_there_is_an_error() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpdateCheckError, match="update feed"):
        check_for_update(f"http://127.0.0.1:{port}/", current="0.1.0", timeout=2)


def test_only_http_urls_are_fetched() -> None:
    with pytest.raises(UpdateCheckError, match="only http"):
        check_for_update("file:///etc/passwd", current="0.1.0")


def test_the_feed_comes_from_the_environment_or_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(FEED_ENV, raising=False)
    assert feed_url() == DEFAULT_FEED_URL
    monkeypatch.setenv(FEED_ENV, "http://127.0.0.1:1/feed")
    assert feed_url() == "http://127.0.0.1:1/feed"


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("0.9", "0.10"),
        ("1.0.dev1", "1.0a1"),
        ("1.0a1", "1.0b2"),
        ("1.0rc1", "1.0"),
        ("1.0", "1.0.post1"),
        ("v1.2.3", "1.2.4"),
        ("0.1.1.dev83+ga15a1a55b.d20261201", "0.1.1"),
    ],
)
def test_versions_sort_as_pep_440_says(lower: str, higher: str) -> None:
    assert version_key(lower) < version_key(higher)


def test_equal_versions_and_bad_versions() -> None:
    assert version_key("1.0") == version_key("v1.0.0")
    with pytest.raises(ValueError, match="not a version"):
        version_key("latest")


def test_tags_that_are_not_versions_are_skipped() -> None:
    releases = parse_feed(json.dumps([_release("nightly"), _release("v0.2.0")]).encode())
    assert [r.version for r in releases] == ["0.2.0"]
