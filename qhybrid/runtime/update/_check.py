"""The update check: fetch a release feed (bounded in time and size), pick the newest release,
compare it with the running version.

The feed is GitHub's releases API (a list of release objects, or the one object of
``/releases/latest``), or any server that answers the same JSON: each release has
``tag_name`` (``v1.2.0`` or ``1.2.0``), ``html_url``, and optionally ``prerelease`` and
``draft``. ``QHYBRID_UPDATE_FEED`` points the check at another feed (a mirror, a test server).
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_FEED_URL",
    "FEED_ENV",
    "Release",
    "UpdateCheckError",
    "UpdateInfo",
    "check_for_update",
    "feed_url",
    "parse_feed",
    "version_key",
]

logger = logging.getLogger(__name__)

DEFAULT_FEED_URL = "https://api.github.com/repos/qhybrid/qhybrid/releases"
FEED_ENV = "QHYBRID_UPDATE_FEED"
MAX_FEED_BYTES = 2 * 1024 * 1024
DEFAULT_TIMEOUT_S = 5.0

_VERSION = re.compile(
    r"^v?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre>a|b|rc|alpha|beta|c)[-_.]?(?P<pre_n>\d*))?"
    r"(?:[-_.]?post[-_.]?(?P<post>\d+))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev>\d+))?"
    r"(?:\+(?P<local>[A-Za-z0-9.]+))?$",
    re.IGNORECASE,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2}


class UpdateCheckError(Exception):
    """The feed could not be read or understood; the message says which feed and why."""


@dataclass(frozen=True)
class Release:
    """One release of the feed."""

    version: str
    url: str
    prerelease: bool


@dataclass(frozen=True)
class UpdateInfo:
    """The answer of a check: ``newer`` is true when ``latest`` is above ``current``."""

    current: str
    latest: str
    url: str
    newer: bool


def version_key(version: str) -> tuple[Any, ...]:
    """A sort key that orders PEP 440 versions (``1.0.dev1 < 1.0a1 < 1.0rc1 < 1.0 < 1.0.post1``);
    a leading ``v`` (a git tag) and the local part (``+g1234``) are ignored.
    Raises ValueError for a string that is not such a version."""
    match = _VERSION.match(version.strip())
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    release = [int(n) for n in match["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    pre: tuple[int, int]
    if match["pre"]:
        pre = (_PRE_RANK[match["pre"].lower()], int(match["pre_n"] or 0))
    elif match["dev"] is not None and match["post"] is None:
        pre = (-1, 0)  # 1.0.dev1 comes before 1.0a1
    else:
        pre = (3, 0)  # a final release comes after its pre-releases
    post = int(match["post"]) if match["post"] is not None else -1
    dev = int(match["dev"]) if match["dev"] is not None else 1 << 62
    return (tuple(release), pre, post, dev)


def feed_url() -> str:
    """The feed to check: ``QHYBRID_UPDATE_FEED`` when set, else GitHub's releases."""
    return os.environ.get(FEED_ENV, "").strip() or DEFAULT_FEED_URL


def parse_feed(data: bytes, source: str = "the feed") -> list[Release]:
    """The releases of a feed document (drafts left out), newest first."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UpdateCheckError(f"{source}: not JSON ({exc})") from None
    items = doc if isinstance(doc, list) else [doc]
    releases: list[Release] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise UpdateCheckError(f"{source}: release {index} is not an object")
        if item.get("draft") is True:
            continue
        tag = item.get("tag_name")
        if not isinstance(tag, str):
            raise UpdateCheckError(f"{source}: release {index} has no tag_name string")
        try:
            version_key(tag)
        except ValueError:
            logger.info("%s: release %d: tag %r is not a version; skipped", source, index, tag)
            continue
        url = item.get("html_url")
        releases.append(
            Release(
                version=tag.strip().removeprefix("v"),
                url=url if isinstance(url, str) else "",
                prerelease=item.get("prerelease") is True,
            )
        )
    releases.sort(key=lambda r: version_key(r.version), reverse=True)
    return releases


def _fetch(url: str, timeout: float) -> bytes:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise UpdateCheckError(f"update feed {url!r}: only http(s) URLs are checked")
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "qhybrid-update-check"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data: bytes = response.read(MAX_FEED_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise UpdateCheckError(f"update feed {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UpdateCheckError(f"update feed {url}: {reason}") from None
    if len(data) > MAX_FEED_BYTES:
        raise UpdateCheckError(f"update feed {url}: larger than {MAX_FEED_BYTES} bytes")
    return data


def check_for_update(
    url: str,
    current: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    include_prereleases: bool = False,
) -> UpdateInfo:
    """Fetch ``url`` and compare its newest release with ``current``.

    Blocking (one HTTP request, at most ``timeout`` seconds per network operation): call it
    from a worker thread. Pre-releases count only with ``include_prereleases`` or when the
    running version is itself a pre-release or development build. Raises
    :class:`UpdateCheckError` when the feed cannot be fetched or read.
    """
    try:
        current_key = version_key(current)
    except ValueError:
        raise UpdateCheckError(f"the running version {current!r} is not a version") from None
    running_pre = current_key[1] != (3, 0)
    releases = [
        r
        for r in parse_feed(_fetch(url, timeout), source=f"update feed {url}")
        if include_prereleases or running_pre or not r.prerelease
    ]
    if not releases:
        return UpdateInfo(current=current, latest=current, url="", newer=False)
    latest = releases[0]
    newer = version_key(latest.version) > current_key
    logger.info("update check: running %s, newest %s (%s)", current, latest.version, url)
    return UpdateInfo(current=current, latest=latest.version, url=latest.url, newer=newer)
