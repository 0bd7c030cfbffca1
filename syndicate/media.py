"""Fetching a story's images for the adapters that upload them.

This is the one place that downloads media, so the rules live here once:

* **No SSRF.** Story bodies come from editors and wire feeds; an ``<img src>`` must not make the service
  fetch ``http://169.254.169.254/`` or an intranet host. Only http/https is fetched, IP-literal hosts are
  checked before anything is sent, and hostnames are checked inside the connector's resolver
  (:class:`GuardedResolver`), so the connection goes to exactly the addresses that were checked (no
  DNS-rebinding gap). Redirects are followed by hand and every hop is checked the same way.
* **Bounded.** The size limit is enforced while streaming (never more than ``limit + 1`` bytes are read), and
  the type is taken from the header and corrected from the magic bytes.
* **Fetched once.** Blobs are cached by URL and content hash, in memory and optionally on disk, so a delivery
  retry never downloads again, and concurrent fetches of one URL share one download.

Errors are :class:`MediaError` subclasses; adapters map them onto the delivery error taxonomy themselves, so
this module stays independent of :mod:`syndicate.channel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import hashlib
import ipaddress
import json
import logging
import mimetypes
import os
import re
import socket
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPredicate = Callable[[IPAddress], bool]

DEFAULT_ALLOWED_TYPES: tuple[str, ...] = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp")
DEFAULT_MEMORY_CACHE_BYTES = 64 * 1024 * 1024

_ALLOW_HINT = "to allow it, name its host:port in [media] allow_hosts"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
_UNTYPED = frozenset({"", "application/octet-stream"})
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class MediaSettings:
    """The ``[media]`` table: what may be fetched, how much, and where blobs are cached."""

    #: Test-only escape hatch: every private, loopback and link-local address allowed. No shipped config sets it.
    allow_private: bool = False
    #: Exact ``host:port`` pairs fetched even on a private or loopback address (the sandbox's own host).
    allow_hosts: frozenset[tuple[str, int]] = frozenset()
    max_bytes: int = 10 * 1024 * 1024
    allowed_types: tuple[str, ...] = DEFAULT_ALLOWED_TYPES
    cache_dir: Path | None = None
    timeout: float = 30.0
    max_redirects: int = 3


@dataclass(frozen=True)
class MediaBlob:
    """A fetched image: the bytes plus what an uploader needs to name and label them."""

    url: str
    content_type: str
    data: bytes
    sha256: str
    filename: str


class MediaError(Exception):
    """Base of every media failure; ``url`` is the URL the caller asked for."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class MediaRefused(MediaError):
    """The URL's scheme or an address it leads to is not allowed; fetching it again will not help."""


class MediaTooLarge(MediaError):
    """The body is larger than the limit; ``size`` is None when the server did not say and reading stopped."""

    def __init__(self, message: str, *, url: str, limit: int, size: int | None) -> None:
        super().__init__(message, url=url)
        self.limit = limit
        self.size = size


class MediaTypeNotAllowed(MediaError):
    """The content is not one of the allowed image types."""

    def __init__(self, message: str, *, url: str, content_type: str) -> None:
        super().__init__(message, url=url)
        self.content_type = content_type


class MediaUnavailable(MediaError):
    """The server could not be reached or answered non-2xx.

    ``retryable`` is True for network errors, timeouts, 5xx, 408 and 429 (it may work later) and False for
    other statuses (404, 410, 403...). ``retry_after`` is the server's Retry-After in seconds, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


# --- address policy ---------------------------------------------------------------------------------------


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address really reaches (mapped, 6to4, NAT64)."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def classify_address(addr: IPAddress) -> str | None:
    """Why ``addr`` is not a public address ("private", "loopback", ...), or None when it is public."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            return classify_address(embedded)
        if addr.is_site_local:
            return "site-local"
    checks: tuple[tuple[str, bool], ...] = (
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("reserved", addr.is_reserved),
        ("private", addr.is_private),
        ("shared (carrier-grade NAT)", isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED),
        ("non-global", not addr.is_global),
    )
    for kind, hit in checks:
        if hit:
            return kind
    return None


def is_public_address(addr: IPAddress) -> bool:
    """The default policy: only globally routable unicast addresses may be fetched."""
    return classify_address(addr) is None


def _describe(addr: IPAddress) -> str:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"{addr} (IPv4-mapped {addr.ipv4_mapped})"
    return str(addr)


def refusal_reason(addr: IPAddress) -> str:
    """The human half of a refusal message, naming the address, what it is, and the setting that allows it."""
    kind = classify_address(addr)
    if kind is None:
        return f"{_describe(addr)} is not an allowed address"
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{_describe(addr)} is {article} {kind} address ({_ALLOW_HINT})"


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _looks_like_ip(host: str) -> bool:
    """aiohttp's test for "connect directly, skip the resolver"; such hosts must parse as an IP address."""
    return ":" in host or host.replace(".", "").isdigit()


class _AddressRefused(Exception):
    """Raised inside the connector (deliberately not an OSError, so aiohttp lets it through unwrapped)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


def _exempt(url: URL, allow_hosts: frozenset[tuple[str, int]]) -> bool:
    """Whether ``url``'s exact host and port are in ``[media] allow_hosts``."""
    return bool(allow_hosts) and url.host is not None and (url.host.lower(), url.port or 0) in allow_hosts


def parse_allowed_host(entry: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8765"`` for IPv6) as the pair ``allow_hosts`` holds; ValueError saying why."""
    text = entry.strip().lower()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not host:port (an exact host and a port 1-65535, e.g. 127.0.0.1:8765)")
    host = host.removeprefix("[").removesuffix("]")
    if "/" in host or "*" in host or " " in host:
        raise ValueError(f"{entry!r}: name one exact host (no wildcards, networks or paths)")
    return host, int(port)


class GuardedResolver(AbstractResolver):
    """A resolver that refuses a hostname when any address it resolves to fails the policy.

    Used as the connector's resolver, so the addresses checked are the addresses connected to: a name that
    resolves to a public address now and to 127.0.0.1 a second later cannot slip through.
    """

    def __init__(
        self,
        allowed: AddressPredicate,
        inner: AbstractResolver | None = None,
        *,
        exempt: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        self._allowed = allowed
        #: ``(host, port)`` pairs let through whatever they resolve to (``[media] allow_hosts``).
        self._exempt = exempt
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if (host.lower(), port) in self._exempt:
            return results
        for result in results:
            addr = _parse_ip(result["host"])
            if addr is None:
                raise _AddressRefused(host, f"{host} resolved to {result['host']!r}, which is not an IP address")
            if not self._allowed(addr):
                raise _AddressRefused(host, f"{host} resolves to a refused address: {refusal_reason(addr)}")
        return results

    async def close(self) -> None:
        await self._inner.close()


# --- content ----------------------------------------------------------------------------------------------


def sniff_image_type(data: bytes) -> str | None:
    """The image type the magic bytes say, or None when they match none of the types we know."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    return None


def _extension(content_type: str) -> str:
    return _EXTENSIONS.get(content_type) or mimetypes.guess_extension(content_type) or ".bin"


def derive_filename(url: str, content_type: str, sha256: str) -> str:
    """A safe ASCII filename from the URL's last path segment, with the extension the content type calls for.

    Platforms reject uploads whose name and bytes disagree (a ``.png`` that is a JPEG), so the URL's own
    extension is replaced. Falls back to ``image-<hash>`` when nothing usable is left.
    """
    try:
        name = URL(url).name
    except ValueError:
        name = ""
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and re.fullmatch(r"[A-Za-z0-9]{1,5}", suffix) and not suffix.isdigit():
        name = stem
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:80].rstrip("._-")
    if not safe:
        safe = f"image-{sha256[:12]}"
    return safe + _extension(content_type)


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


# --- cache ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    sha256: str
    content_type: str
    filename: str
    data: bytes


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _DiskCache:
    """``<dir>/<sha256>`` holds the bytes; ``<dir>/index/<sha256(url)>.json`` maps a URL to one of them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _index_path(self, key: str) -> Path:
        return self.root / "index" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def load(self, key: str) -> _Entry | None:
        try:
            meta = json.loads(self._index_path(key).read_text("utf-8"))
            if meta.get("url") != key:
                return None
            sha = str(meta["sha256"])
            data = (self.root / sha).read_bytes()
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("media cache: unreadable entry for %s: %s", key, exc)
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            log.warning("media cache: %s does not match its hash; fetching again", self.root / sha)
            with contextlib.suppress(OSError):
                (self.root / sha).unlink()
            return None
        return _Entry(sha, str(meta["content_type"]), str(meta["filename"]), data)

    def store(self, key: str, entry: _Entry) -> None:
        index = self._index_path(key)
        index.parent.mkdir(parents=True, exist_ok=True)
        data_path = self.root / entry.sha256
        if not data_path.exists():
            _atomic_write(data_path, entry.data)
        meta = {
            "url": key,
            "sha256": entry.sha256,
            "content_type": entry.content_type,
            "filename": entry.filename,
            "size": len(entry.data),
        }
        _atomic_write(index, json.dumps(meta, ensure_ascii=False).encode("utf-8"))


class _MemoryCache:
    """URL -> hash plus hash -> bytes, LRU-bounded by total bytes (one copy of an image found at two URLs)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._urls: dict[str, tuple[str, str, str]] = {}
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._urls_by_sha: dict[str, set[str]] = {}
        self._total = 0

    def get(self, key: str) -> _Entry | None:
        meta = self._urls.get(key)
        if meta is None:
            return None
        sha, content_type, filename = meta
        self._blobs.move_to_end(sha)
        return _Entry(sha, content_type, filename, self._blobs[sha])

    def put(self, key: str, entry: _Entry) -> None:
        size = len(entry.data)
        if size > self.limit:
            return
        if key in self._urls:
            self._unlink(key)
        if entry.sha256 in self._blobs:
            self._blobs.move_to_end(entry.sha256)
        else:
            self._blobs[entry.sha256] = entry.data
            self._total += size
        self._urls[key] = (entry.sha256, entry.content_type, entry.filename)
        self._urls_by_sha.setdefault(entry.sha256, set()).add(key)
        while self._total > self.limit:
            sha, data = self._blobs.popitem(last=False)
            self._total -= len(data)
            for url in self._urls_by_sha.pop(sha, set()):
                self._urls.pop(url, None)

    def _unlink(self, key: str) -> None:
        sha = self._urls.pop(key)[0]
        urls = self._urls_by_sha.get(sha)
        if urls is not None:
            urls.discard(key)
            if not urls:
                del self._urls_by_sha[sha]
                self._total -= len(self._blobs.pop(sha))


# --- fetcher ----------------------------------------------------------------------------------------------


class MediaFetcher:
    """Fetches images under :class:`MediaSettings`, caching them so retries and duplicates cost nothing.

    ``address_allowed`` replaces the address policy (default: public addresses only, or anything when
    ``settings.allow_private``); tests use it to allow 127.0.0.1 while still refusing 10.0.0.0/8.

    When ``session`` is given it is used as is and not closed here. Its connector does not know the policy,
    so hostnames are resolved and checked before each request and the connected peer is checked again before
    the body is read; a session built on ``aiohttp.TCPConnector(resolver=GuardedResolver(...))`` closes the
    remaining gap. Without ``session`` the fetcher builds (and closes) one whose resolver enforces the policy.
    """

    def __init__(
        self,
        settings: MediaSettings,
        session: aiohttp.ClientSession | None = None,
        *,
        address_allowed: AddressPredicate | None = None,
        memory_cache_bytes: int = DEFAULT_MEMORY_CACHE_BYTES,
    ) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._resolver: GuardedResolver | None = None
        if address_allowed is not None:
            self._allowed: AddressPredicate = address_allowed
        elif settings.allow_private:
            self._allowed = lambda _addr: True
        else:
            self._allowed = is_public_address
        self._memory = _MemoryCache(memory_cache_bytes)
        self._disk = _DiskCache(settings.cache_dir) if settings.cache_dir is not None else None
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session (only if this fetcher created it) and the resolver. Safe to call twice; a later fetch
        opens new ones (the engine shares one fetcher across its channels and may be started again)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def fetch(
        self, url: str, *, max_bytes: int | None = None, allowed_types: Sequence[str] | None = None
    ) -> MediaBlob:
        """Fetch ``url`` (or take it from the cache) and check it against the settings and per-call limits.

        ``max_bytes`` and ``allowed_types`` can only tighten the settings (body images may have to be < 1 MB
        jpg/png while a cover may be 10 MB): the effective limit is the smaller one and the effective types
        the intersection. A cached blob is held to the same limits and raises the same errors as a fetch.
        """
        limit = self.settings.max_bytes if max_bytes is None else min(max_bytes, self.settings.max_bytes)
        types = frozenset(t.lower() for t in self.settings.allowed_types)
        if allowed_types is not None:
            types &= {t.lower() for t in allowed_types}
        try:
            target = URL(url).with_fragment(None)
        except (ValueError, TypeError) as exc:
            raise MediaRefused(f"refusing {url}: not a valid URL ({exc})", url=url) from exc
        self._check_target(url, target)
        key = str(target)
        async with self._url_lock(key):
            entry = self._memory.get(key)
            if entry is None and self._disk is not None:
                entry = await asyncio.to_thread(self._disk.load, key)
                if entry is not None:
                    self._memory.put(key, entry)
            if entry is None:
                entry = await self._download(url, target, limit, types)
                self._memory.put(key, entry)
                if self._disk is not None:
                    try:
                        await asyncio.to_thread(self._disk.store, key, entry)
                    except OSError as exc:
                        log.warning("media cache: could not store %s: %s", url, exc)
        self._check_entry(url, entry, limit, types)
        return MediaBlob(url, entry.content_type, entry.data, entry.sha256, entry.filename)

    # -- internals ------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _url_lock(self, key: str) -> AsyncIterator[None]:
        """One download per URL at a time: later callers wait, then find the blob in the cache."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._lock_users[key] = self._lock_users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[key] -= 1
            if not self._lock_users[key]:
                del self._lock_users[key]
                del self._locks[key]

    def _get_resolver(self) -> GuardedResolver:
        # Created lazily: aiohttp's resolvers bind to the running loop.
        if self._resolver is None:
            self._resolver = GuardedResolver(self._allowed, exempt=self.settings.allow_hosts)
        return self._resolver

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=self._get_resolver())
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        return self._session

    def _check_target(self, original: str, target: URL, *, hop: int = 0) -> None:
        """Refuse a non-http(s) URL, or an IP-literal host outside the policy (the resolver never sees it)."""
        where = original if hop == 0 else f"{target} (redirect {hop} from {original})"
        if target.scheme not in ("http", "https"):
            raise MediaRefused(
                f"refusing {where}: scheme {target.scheme!r} is not allowed (only http and https)",
                url=original,
            )
        host = target.host
        if not host:
            raise MediaRefused(f"refusing {where}: the URL has no host", url=original)
        if _exempt(target, self.settings.allow_hosts):
            return
        addr = _parse_ip(host)
        if addr is None:
            if _looks_like_ip(host):
                raise MediaRefused(f"refusing {where}: {host} is not a canonical IP address", url=original)
            return
        if not self._allowed(addr):
            raise MediaRefused(f"refusing {where}: {refusal_reason(addr)}", url=original)

    def _check_peer(self, resp: aiohttp.ClientResponse) -> None:
        """Backstop for caller-supplied sessions: the address actually connected to must pass the policy.

        Best effort: a small body may already be read and its connection released, so this falls back to the
        response's protocol (a private aiohttp attribute, looked up defensively).
        """
        conn = resp.connection
        transport = conn.transport if conn is not None else None
        if transport is None:
            transport = getattr(getattr(resp, "_protocol", None), "transport", None)
        peer = transport.get_extra_info("peername") if transport is not None else None
        if not isinstance(peer, tuple) or not peer:
            return
        addr = _parse_ip(str(peer[0]))
        if addr is not None and not self._allowed(addr) and not _exempt(resp.url, self.settings.allow_hosts):
            resp.close()
            raise _AddressRefused(
                resp.url.host or str(peer[0]), f"connected to a refused address: {refusal_reason(addr)}"
            )

    def _check_entry(self, url: str, entry: _Entry, limit: int, types: frozenset[str]) -> None:
        size = len(entry.data)
        if size > limit:
            raise MediaTooLarge(
                f"{url} is {size} bytes, over the limit of {limit} bytes", url=url, limit=limit, size=size
            )
        if entry.content_type not in types:
            raise MediaTypeNotAllowed(
                f"{url} is {entry.content_type}, not one of {', '.join(sorted(types)) or '(none allowed)'}",
                url=url,
                content_type=entry.content_type,
            )

    async def _download(self, url: str, target: URL, limit: int, types: frozenset[str]) -> _Entry:
        """Follow redirects by hand (checking each hop) and read the body within the limits."""
        session = self._get_session()
        current = target
        try:
            async with asyncio.timeout(self.settings.timeout):
                for hop in range(self.settings.max_redirects + 1):
                    if not self._owns_session and current.host and _parse_ip(current.host) is None:
                        await self._get_resolver().resolve(current.host, current.port or 0, socket.AF_UNSPEC)
                    async with session.get(
                        current,
                        allow_redirects=False,
                        headers={"Accept": "image/*", "Accept-Encoding": "identity"},
                    ) as resp:
                        self._check_peer(resp)
                        if resp.status in _REDIRECT_STATUSES:
                            current = self._next_hop(url, current, resp, hop + 1)
                            continue
                        if not 200 <= resp.status < 300:
                            raise self._unavailable(url, resp)
                        return await self._read(url, resp, limit, types)
                raise MediaUnavailable(
                    f"{url}: more than {self.settings.max_redirects} redirects",
                    url=url,
                    status=None,
                    retryable=False,
                )
        except _AddressRefused as exc:
            where = url if current == target else f"{current} (redirected from {url})"
            raise MediaRefused(f"refusing {where}: {exc.reason}", url=url) from exc
        except TimeoutError as exc:
            raise MediaUnavailable(
                f"{url}: timed out after {self.settings.timeout:g}s", url=url, status=None, retryable=True
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise MediaRefused(f"refusing {url}: not a valid URL ({exc})", url=url) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise MediaUnavailable(
                f"{url}: TLS certificate error: {exc}", url=url, status=None, retryable=False
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            # OSError: the pre-request DNS check for a caller-supplied session (socket.gaierror).
            raise MediaUnavailable(f"{url}: {type(exc).__name__}: {exc}", url=url, status=None, retryable=True) from exc

    def _next_hop(self, url: str, current: URL, resp: aiohttp.ClientResponse, hop: int) -> URL:
        location = resp.headers.get("Location")
        if not location:
            raise MediaUnavailable(
                f"{url}: {resp.status} redirect without a Location",
                url=url,
                status=resp.status,
                retryable=False,
            )
        try:
            nxt = current.join(URL(location)).with_fragment(None)
        except (ValueError, TypeError) as exc:
            raise MediaUnavailable(
                f"{url}: bad redirect Location {location!r}", url=url, status=resp.status, retryable=False
            ) from exc
        if hop > self.settings.max_redirects:
            raise MediaUnavailable(
                f"{url}: more than {self.settings.max_redirects} redirects",
                url=url,
                status=resp.status,
                retryable=False,
            )
        self._check_target(url, nxt, hop=hop)
        return nxt

    def _unavailable(self, url: str, resp: aiohttp.ClientResponse) -> MediaUnavailable:
        retryable = resp.status >= 500 or resp.status in _RETRYABLE_STATUSES
        return MediaUnavailable(
            f"{url}: HTTP {resp.status} {resp.reason or ''}".rstrip(),
            url=url,
            status=resp.status,
            retryable=retryable,
            retry_after=_retry_after(resp.headers.get("Retry-After")) if retryable else None,
        )

    async def _read(self, url: str, resp: aiohttp.ClientResponse, limit: int, types: frozenset[str]) -> _Entry:
        header = _media_type(resp.headers.get("Content-Type"))
        if header not in _UNTYPED and not header.startswith("image/") and header not in types:
            # Refuse an HTML error page and the like before downloading it.
            raise MediaTypeNotAllowed(f"{url} is {header}, not an image", url=url, content_type=header)
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if resp.content_length is not None and encoding == "identity" and resp.content_length > limit:
            resp.close()
            raise MediaTooLarge(
                f"{url} is {resp.content_length} bytes, over the limit of {limit} bytes",
                url=url,
                limit=limit,
                size=resp.content_length,
            )
        buf = bytearray()
        while True:
            chunk = await resp.content.read(min(_READ_CHUNK, limit + 1 - len(buf)))
            if not chunk:
                break
            buf += chunk
            if len(buf) > limit:
                resp.close()
                raise MediaTooLarge(f"{url} is over the limit of {limit} bytes", url=url, limit=limit, size=None)
        data = bytes(buf)
        sniffed = sniff_image_type(data)
        if header in _UNTYPED:
            content_type = sniffed or "application/octet-stream"
        elif header.startswith("image/") and sniffed is not None:
            content_type = sniffed  # the bytes are what gets uploaded; trust them over the label
        elif header in _EXTENSIONS:
            raise MediaTypeNotAllowed(
                f"{url} says {header} but its bytes are not a recognised image", url=url, content_type=header
            )
        else:
            content_type = header
        if content_type not in types:
            raise MediaTypeNotAllowed(
                f"{url} is {content_type}, not one of {', '.join(sorted(types)) or '(none allowed)'}",
                url=url,
                content_type=content_type,
            )
        sha = hashlib.sha256(data).hexdigest()
        return _Entry(sha, content_type, derive_filename(url, content_type, sha), data)


__all__ = [
    "DEFAULT_ALLOWED_TYPES",
    "AddressPredicate",
    "GuardedResolver",
    "IPAddress",
    "MediaBlob",
    "MediaError",
    "MediaFetcher",
    "MediaRefused",
    "MediaSettings",
    "MediaTooLarge",
    "MediaTypeNotAllowed",
    "MediaUnavailable",
    "classify_address",
    "derive_filename",
    "is_public_address",
    "refusal_reason",
    "sniff_image_type",
]
