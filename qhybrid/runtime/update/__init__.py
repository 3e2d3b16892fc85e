"""Checking a release feed for a newer qhybrid (off by default; the window has the setting).

No Qt: the window runs :func:`check_for_update` off its GUI thread and shows the answer.

    info = check_for_update(DEFAULT_FEED_URL, current="0.1.0")
    if info.newer:
        print(f"qhybrid {info.latest} is out: {info.url}")
"""

from __future__ import annotations

from qhybrid.runtime.update._check import (
    DEFAULT_FEED_URL,
    FEED_ENV,
    Release,
    UpdateCheckError,
    UpdateInfo,
    check_for_update,
    feed_url,
    parse_feed,
    version_key,
)

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
