"""Where the dashboard may send a browser: the one check every redirect it makes goes through.

``next`` (after the login) and ``back`` (after an action) come from the request, so a link someone else made can
set them. A browser does not read a ``Location`` the way Python's ``startswith("/")`` does: it drops tabs, line
feeds and carriage returns anywhere, leading and trailing spaces and C0 controls, reads ``\\`` as ``/``, and
takes ``//host`` (or ``/\\host``) as another site. ``local_path`` reads the value that way, also through
percent-encoding, and lets through only a path of this dashboard.
"""

from __future__ import annotations

import urllib.parse

#: What a browser removes anywhere in a URL (the WHATWG URL parser's "ASCII tab or newline").
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")
#: What it trims at both ends ("C0 control or space").
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))
#: How many layers of percent-encoding are looked through (a proxy or a second redirect may decode one more).
_DECODE_LAYERS = 4
#: The dashboard's own pages; nothing else on the service is a place to come back to.
_DASHBOARD_PREFIX = "/dashboard/"
#: Kept as they are when the path is re-encoded for the header; everything else (non-ASCII...) is %-encoded.
_SAFE = "/?&=%#:;@!$'()*+,~-._"


def _as_browser_reads(value: str) -> str:
    return value.translate(_TAB_OR_NEWLINE).strip(_C0_OR_SPACE).replace("\\", "/")


def _is_dashboard_path(value: str) -> bool:
    if not value.startswith("/") or value.startswith("//"):
        return False  # relative, or scheme-relative: //evil.example
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return False
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc:
        return False
    segments = parts.path.split("/")
    if any(s in (".", "..") for s in segments):
        return False  # /dashboard/../… leaves the dashboard once the browser resolves it
    return parts.path == "/" or parts.path.startswith(_DASHBOARD_PREFIX)


def local_path(value: str | None, default: str) -> str:
    """``value`` when a browser would read it as a path of this dashboard (``/`` or ``/dashboard/…``), as it
    would read it; otherwise ``default``. Scheme-relative, absolute and ``javascript:`` URLs, backslashes,
    tabs and newlines, and percent-encoded spellings of any of them all fall back to ``default``."""
    if not value:
        return default
    seen = _as_browser_reads(value)
    probe = seen
    for _ in range(_DECODE_LAYERS):
        if not _is_dashboard_path(probe):
            return default
        decoded = _as_browser_reads(urllib.parse.unquote(probe))
        if decoded == probe:
            break
        probe = decoded
    else:
        if not _is_dashboard_path(probe):
            return default
    return urllib.parse.quote(seen, safe=_SAFE)
