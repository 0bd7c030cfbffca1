"""Tests for syndicate.media against a local aiohttp server on 127.0.0.1.

Everything here is loopback, so most tests either set ``allow_private`` or pass an ``address_allowed``
predicate that allows exactly 127.0.0.1 (which still refuses 10.0.0.0/8 and friends, for the redirect-hop
checks).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from syndicate.media import (
    GuardedResolver,
    IPAddress,
    MediaBlob,
    MediaFetcher,
    MediaRefused,
    MediaSettings,
    MediaTooLarge,
    MediaTypeNotAllowed,
    MediaUnavailable,
    classify_address,
    derive_filename,
    is_public_address,
    refusal_reason,
    sniff_image_type,
)

# Tiny "images": valid magic bytes are all the fetcher looks at.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20 + b"\xff\xd9"
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8 " + b"\x00" * 14
BMP = b"BM" + b"\x00" * 30
BIG = PNG + b"\x00" * (200_000 - len(PNG))

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def only_loopback(addr: IPAddress) -> bool:
    """Allow the test server, refuse everything else that is not public."""
    return addr == LOOPBACK


@dataclass
class Server:
    base: str
    port: int
    hits: Counter[str]

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def _image(body: bytes, content_type: str | None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.Response(body=body)
        if content_type is None:
            resp.headers["X-Drop-Content-Type"] = "1"  # see _drop_content_type
        else:
            resp.headers["Content-Type"] = content_type
        return resp

    return handler


async def _drop_content_type(request: web.Request, resp: web.StreamResponse) -> None:
    """aiohttp adds ``application/octet-stream`` to any body; take it out again to serve no Content-Type."""
    if resp.headers.pop("X-Drop-Content-Type", None):
        resp.headers.pop("Content-Type", None)


def _status(status: int, **headers: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="nope", headers=headers)

    return handler


def _redirect(location: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location)

    return handler


async def _chain(request: web.Request) -> web.StreamResponse:
    """/r/N redirects (relatively) to /r/N-1; /r/0 is the image."""
    n = int(request.match_info["n"])
    if n == 0:
        return web.Response(body=PNG, content_type="image/png")
    raise web.HTTPFound(f"/r/{n - 1}")


async def _chunked(request: web.Request) -> web.StreamResponse:
    """An endless-looking chunked body with no Content-Length (up to 20 MB)."""
    resp = web.StreamResponse(headers={"Content-Type": "image/png"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        await resp.write(PNG)
        for _ in range(320):
            await resp.write(b"\x00" * 65536)
        await resp.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        pass
    return resp


async def _slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(0.2)
    return web.Response(body=JPEG, content_type="image/jpeg")


async def _hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(10)
    return web.Response(body=PNG, content_type="image/png")


HITS = web.AppKey("hits", Counter[str])


async def _flaky(request: web.Request) -> web.StreamResponse:
    """503 on the first request, the image afterwards."""
    if request.app[HITS][request.path] == 1:
        return web.Response(status=503, text="busy")
    return web.Response(body=PNG, content_type="image/png")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    hits: Counter[str] = Counter()

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        hits[request.path] += 1
        return await handler(request)

    app = web.Application(middlewares=[count])
    app[HITS] = hits
    app.on_response_prepare.append(_drop_content_type)
    routes = {
        "/img.png": _image(PNG, "image/png"),
        "/img.jpg": _image(JPEG, "image/jpeg; charset=binary"),
        "/img.gif": _image(GIF, "IMAGE/GIF"),
        "/img.webp": _image(WEBP, "image/webp"),
        "/other.png": _image(GIF + b"other", "image/gif"),
        "/octet.bin": _image(PNG, "application/octet-stream"),
        "/untyped": _image(WEBP, None),
        "/untyped-text": _image(b"just some text", None),
        "/lying.jpg": _image(PNG, "image/jpeg"),
        "/bmp-as-gif": _image(BMP, "image/gif"),
        "/not-an-image.png": _image(b"<html>oops</html>", "image/png"),
        "/page.html": _image(b"<html>" + b"x" * 100_000 + b"</html>", "text/html; charset=utf-8"),
        "/big.png": _image(BIG, "image/png"),
        "/chunked.png": _chunked,
        "/slow.jpg": _slow,
        "/hang.png": _hang,
        "/flaky.png": _flaky,
        "/missing.png": _status(404),
        "/gone.png": _status(410),
        "/forbidden.png": _status(403),
        "/busy.png": _status(503, **{"Retry-After": "7"}),
        "/limited.png": _status(429),
        "/to-private": _redirect("http://10.0.0.1/x.png"),
        "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-ftp": _redirect("ftp://example.com/x.png"),
        "/no-location": _status(302),
        "/r/{n}": _chain,
    }
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    assert srv.port is not None
    try:
        yield Server(f"http://127.0.0.1:{srv.port}", srv.port, hits)
    finally:
        await srv.close()


@pytest.fixture
async def fetcher() -> AsyncIterator[MediaFetcher]:
    async with MediaFetcher(MediaSettings(allow_private=True)) as f:
        yield f


class NoNetwork:
    """A stand-in session that fails the test if the fetcher tries to use it."""

    closed = False

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the fetcher made a request")

    async def close(self) -> None:
        raise AssertionError("the fetcher closed a session it does not own")


def no_network_fetcher(**settings: Any) -> MediaFetcher:
    return MediaFetcher(MediaSettings(**settings), session=NoNetwork())  # type: ignore[arg-type]


# --- address policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:a00:1::", "private"),  # 6to4 for 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 for 127.0.0.1
    ],
)
def test_classify_refused_addresses(address: str, kind: str) -> None:
    addr = ipaddress.ip_address(address)
    assert classify_address(addr) == kind
    assert not is_public_address(addr)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_allowed(address: str) -> None:
    addr = ipaddress.ip_address(address)
    assert classify_address(addr) is None
    assert is_public_address(addr)


def test_refusal_reason_names_address_and_setting() -> None:
    reason = refusal_reason(ipaddress.ip_address("10.0.0.5"))
    assert reason == "10.0.0.5 is a private address (to allow it, name its host:port in [media] allow_hosts)"
    mapped = refusal_reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert "127.0.0.1" in mapped and "loopback" in mapped
    assert "an unspecified address" in refusal_reason(ipaddress.ip_address("0.0.0.0"))


async def test_loopback_refused_by_default(server: Server) -> None:
    async with MediaFetcher(MediaSettings()) as f:
        with pytest.raises(MediaRefused) as info:
            await f.fetch(server.url("/img.png"))
    message = str(info.value)
    assert message.startswith(f"refusing {server.url('/img.png')}: 127.0.0.1 is a loopback address")
    assert "allow_hosts" in message
    assert info.value.url == server.url("/img.png")
    assert server.hits["/img.png"] == 0


async def test_loopback_allowed_with_allow_private(server: Server, fetcher: MediaFetcher) -> None:
    blob = await fetcher.fetch(server.url("/img.png"))
    assert blob == MediaBlob(
        url=server.url("/img.png"),
        content_type="image/png",
        data=PNG,
        sha256=hashlib.sha256(PNG).hexdigest(),
        filename="img.png",
    )


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://10.0.0.5/a.png", "10.0.0.5 is a private address"),
        ("http://192.168.0.10/a.png", "192.168.0.10 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[::1]:8080/a.png", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/a.png", "(IPv4-mapped 127.0.0.1) is a loopback address"),
        ("https://0.0.0.0/a.png", "0.0.0.0 is an unspecified address"),
    ],
)
async def test_private_literals_refused_without_network(url: str, named: str) -> None:
    f = no_network_fetcher()
    with pytest.raises(MediaRefused) as info:
        await f.fetch(url)
    assert str(info.value).startswith(f"refusing {url}: ")
    assert named in str(info.value)
    assert "allow_hosts" in str(info.value)
    await f.close()


@pytest.mark.parametrize("url", ["http://127.1/a.png", "http://2130706433/a.png", "http://127.0.0.1./a.png"])
async def test_non_canonical_ip_literals_refused(url: str) -> None:
    f = no_network_fetcher(allow_private=False)
    with pytest.raises(MediaRefused, match="not a canonical IP address"):
        await f.fetch(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/a.png", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("data:image/png;base64,AAAA", "scheme 'data' is not allowed"),
        ("http:///a.png", "no host"),
    ],
)
async def test_bad_schemes_refused(url: str, why: str) -> None:
    f = no_network_fetcher(allow_private=True)
    with pytest.raises(MediaRefused, match=why):
        await f.fetch(url)


async def test_hostname_resolving_to_loopback_refused_by_resolver(server: Server) -> None:
    url = f"http://localhost:{server.port}/img.png"
    async with MediaFetcher(MediaSettings()) as f:
        with pytest.raises(MediaRefused) as info:
            await f.fetch(url)
    message = str(info.value)
    assert message.startswith(f"refusing {url}: localhost resolves to a refused address: ")
    assert "loopback address" in message and "allow_hosts" in message
    assert server.hits["/img.png"] == 0


async def test_untyped_route_really_sends_no_content_type(server: Server) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.url("/untyped")) as resp:
        assert "Content-Type" not in resp.headers
        assert await resp.read() == WEBP


async def test_hostname_allowed_with_allow_private(server: Server, fetcher: MediaFetcher) -> None:
    blob = await fetcher.fetch(f"http://localhost:{server.port}/img.png")
    assert blob.data == PNG


async def test_supplied_session_hostname_checked_before_request(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        f = MediaFetcher(MediaSettings(), session)
        with pytest.raises(MediaRefused, match=r"localhost resolves to a refused address: .* loopback"):
            await f.fetch(f"http://localhost:{server.port}/img.png")
        await f.close()
        assert not session.closed
    assert server.hits["/img.png"] == 0


async def test_supplied_session_peer_address_checked(server: Server) -> None:
    # The literal check allows the first call; the connected-peer backstop gets the second and refuses.
    calls: list[IPAddress] = []

    def first_only(addr: IPAddress) -> bool:
        calls.append(addr)
        return len(calls) == 1

    async with aiohttp.ClientSession() as session:
        f = MediaFetcher(MediaSettings(), session, address_allowed=first_only)
        with pytest.raises(MediaRefused, match=re.escape("connected to a refused address: 127.0.0.1 is a loopback")):
            await f.fetch(server.url("/img.png"))
    assert calls == [LOOPBACK, LOOPBACK]


async def test_supplied_session_used_when_allowed(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async with MediaFetcher(MediaSettings(allow_private=True), session) as f:
            blob = await f.fetch(f"http://localhost:{server.port}/img.jpg")
        assert blob.content_type == "image/jpeg"
        assert not session.closed


async def test_guarded_resolver_refuses_if_any_address_is_private() -> None:
    class Fake(aiohttp.abc.AbstractResolver):
        def __init__(self, hosts: list[str]) -> None:
            self.hosts = hosts

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[aiohttp.abc.ResolveResult]:
            return [
                {"hostname": host, "host": h, "port": port, "family": family, "proto": 0, "flags": 0}
                for h in self.hosts
            ]

        async def close(self) -> None:
            pass

    ok = GuardedResolver(is_public_address, Fake(["93.184.216.34", "2606:4700:4700::1111"]))
    assert [r["host"] for r in await ok.resolve("example.com", 443)] == [
        "93.184.216.34",
        "2606:4700:4700::1111",
    ]
    rebinding = GuardedResolver(is_public_address, Fake(["93.184.216.34", "10.1.2.3"]))
    with pytest.raises(
        Exception, match=re.escape("example.com resolves to a refused address: 10.1.2.3 is a private address")
    ):
        await rebinding.resolve("example.com", 443)


# --- redirects ----------------------------------------------------------------------------------------------


async def test_redirects_followed_up_to_the_limit(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True, max_redirects=3)) as f:
        blob = await f.fetch(server.url("/r/3"))
        assert blob.data == PNG
        assert blob.url == server.url("/r/3")
        with pytest.raises(MediaUnavailable, match="more than 3 redirects") as info:
            await f.fetch(server.url("/r/4"))
    assert not info.value.retryable
    assert server.hits["/r/4"] == 1 and server.hits["/r/0"] == 1  # the 4th redirect was not followed


async def test_no_redirects_allowed(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True, max_redirects=0)) as f:
        assert (await f.fetch(server.url("/r/0"))).data == PNG
        with pytest.raises(MediaUnavailable, match="more than 0 redirects"):
            await f.fetch(server.url("/r/1"))


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/to-private", "http://10.0.0.1/x.png (redirect 1 from"),
        ("/to-metadata", "169.254.169.254 is a link-local address"),
    ],
)
async def test_redirect_hop_to_private_address_refused(server: Server, path: str, named: str) -> None:
    async with MediaFetcher(MediaSettings(), address_allowed=only_loopback) as f:
        with pytest.raises(MediaRefused) as info:
            await f.fetch(server.url(path))
    assert named in str(info.value)
    assert "allow_hosts" in str(info.value)
    assert server.hits[path] == 1


async def test_redirect_to_other_scheme_refused(server: Server, fetcher: MediaFetcher) -> None:
    with pytest.raises(MediaRefused, match="scheme 'ftp' is not allowed"):
        await fetcher.fetch(server.url("/to-ftp"))


async def test_redirect_without_location(server: Server, fetcher: MediaFetcher) -> None:
    with pytest.raises(MediaUnavailable, match="without a Location") as info:
        await fetcher.fetch(server.url("/no-location"))
    assert info.value.status == 302 and not info.value.retryable


# --- size ---------------------------------------------------------------------------------------------------


async def test_size_limit_with_content_length(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True, max_bytes=100_000)) as f:
        with pytest.raises(MediaTooLarge) as info:
            await f.fetch(server.url("/big.png"))
    assert info.value.size == len(BIG)
    assert info.value.limit == 100_000


async def test_size_limit_per_call(server: Server, fetcher: MediaFetcher) -> None:
    with pytest.raises(MediaTooLarge):
        await fetcher.fetch(server.url("/big.png"), max_bytes=len(BIG) - 1)
    blob = await fetcher.fetch(server.url("/big.png"), max_bytes=len(BIG))
    assert len(blob.data) == len(BIG)


async def test_per_call_limit_cannot_loosen_settings(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True, max_bytes=1000)) as f:
        with pytest.raises(MediaTooLarge) as info:
            await f.fetch(server.url("/big.png"), max_bytes=10_000_000)
    assert info.value.limit == 1000


async def test_size_limit_without_content_length(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True, max_bytes=100_000, timeout=10)) as f:
        started = time.monotonic()
        with pytest.raises(MediaTooLarge) as info:
            await f.fetch(server.url("/chunked.png"))
    assert info.value.size is None
    assert time.monotonic() - started < 5  # stopped early, not after 20 MB


class _FakeContent:
    def __init__(self) -> None:
        self.requested = 0

    async def read(self, n: int = -1) -> bytes:
        assert n > 0
        self.requested += n
        return (PNG + b"\x00" * n)[:n] if self.requested == n else b"\x00" * n


class _FakeResponse:
    headers: dict[str, str] = {}  # noqa: RUF012
    content_length = None

    def __init__(self) -> None:
        self.content = _FakeContent()
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_never_reads_more_than_limit_plus_one() -> None:
    f = MediaFetcher(MediaSettings())
    resp = _FakeResponse()
    with pytest.raises(MediaTooLarge):
        await f._read("http://example.com/x.png", resp, 150_000, frozenset({"image/png"}))  # type: ignore[arg-type]
    assert resp.content.requested == 150_001
    assert resp.closed


# --- types --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (b"GIF87a..", "image/gif"),
        (WEBP, "image/webp"),
        (BMP, "image/bmp"),
        (b"RIFF\x00\x00\x00\x00WAVE", None),
        (b"<html>", None),
        (b"", None),
    ],
)
def test_sniff(data: bytes, expected: str | None) -> None:
    assert sniff_image_type(data) == expected


@pytest.mark.parametrize(
    ("path", "content_type", "filename"),
    [
        ("/img.jpg", "image/jpeg", "img.jpg"),  # header parameters stripped
        ("/img.gif", "image/gif", "img.gif"),  # header lowercased
        ("/img.webp", "image/webp", "img.webp"),
        ("/octet.bin", "image/png", "octet.png"),  # octet-stream: sniffed
        ("/untyped", "image/webp", "untyped.webp"),  # no header: sniffed
        ("/lying.jpg", "image/png", "lying.png"),  # header says JPEG, bytes say PNG: bytes win
        ("/bmp-as-gif", "image/bmp", "bmp-as-gif.bmp"),
    ],
)
async def test_content_type(server: Server, fetcher: MediaFetcher, path: str, content_type: str, filename: str) -> None:
    blob = await fetcher.fetch(server.url(path))
    assert blob.content_type == content_type
    assert blob.filename == filename


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/page.html", "text/html"),
        ("/untyped-text", "application/octet-stream"),
        ("/not-an-image.png", "image/png"),
    ],
)
async def test_not_an_image_refused(server: Server, fetcher: MediaFetcher, path: str, content_type: str) -> None:
    with pytest.raises(MediaTypeNotAllowed) as info:
        await fetcher.fetch(server.url(path))
    assert info.value.content_type == content_type


async def test_type_refused_per_call(server: Server, fetcher: MediaFetcher) -> None:
    with pytest.raises(MediaTypeNotAllowed, match="image/png, not one of image/jpeg"):
        await fetcher.fetch(server.url("/img.png"), allowed_types=("image/jpeg",))
    assert (await fetcher.fetch(server.url("/img.png"), allowed_types=["image/jpeg", "image/png"])).data == PNG


async def test_type_refused_by_settings_and_not_widened_per_call(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True, allowed_types=("image/png",))) as f:
        with pytest.raises(MediaTypeNotAllowed):
            await f.fetch(server.url("/img.gif"))
        with pytest.raises(MediaTypeNotAllowed):
            await f.fetch(server.url("/img.gif"), allowed_types=("image/gif",))


@pytest.mark.parametrize(
    ("url", "content_type", "expected"),
    [
        ("http://x/photos/Cat%20Pic.PNG", "image/png", "Cat_Pic.png"),
        ("http://x/a/b/photo.jpeg?w=100#frag", "image/jpeg", "photo.jpg"),
        ("http://x/a/photo.png", "image/jpeg", "photo.jpg"),
        ("http://x/2024.05.01", "image/gif", "2024.05.01.gif"),
        ("http://x/..hidden.webp", "image/webp", "hidden.webp"),
        ("http://x/%E5%9B%BE%E7%89%87.jpg", "image/jpeg", "image-0123456789ab.jpg"),
        ("http://x/", "image/bmp", "image-0123456789ab.bmp"),
    ],
)
def test_derive_filename(url: str, content_type: str, expected: str) -> None:
    assert derive_filename(url, content_type, "0123456789abcdef" * 4) == expected


# --- cache --------------------------------------------------------------------------------------------------


async def test_second_fetch_served_from_memory(server: Server, fetcher: MediaFetcher) -> None:
    first = await fetcher.fetch(server.url("/img.png"))
    second = await fetcher.fetch(server.url("/img.png"))
    assert first == second
    assert server.hits["/img.png"] == 1


async def test_cached_blob_still_held_to_per_call_limits(server: Server, fetcher: MediaFetcher) -> None:
    await fetcher.fetch(server.url("/img.png"))
    with pytest.raises(MediaTooLarge) as too_large:
        await fetcher.fetch(server.url("/img.png"), max_bytes=10)
    assert too_large.value.size == len(PNG)
    with pytest.raises(MediaTypeNotAllowed):
        await fetcher.fetch(server.url("/img.png"), allowed_types=("image/jpeg",))
    assert server.hits["/img.png"] == 1


async def test_disk_cache_survives_a_new_fetcher(server: Server, tmp_path: Path) -> None:
    settings = MediaSettings(allow_private=True, cache_dir=tmp_path / "media")
    url = server.url("/img.png")
    async with MediaFetcher(settings) as f:
        first = await f.fetch(url)
    sha = hashlib.sha256(PNG).hexdigest()
    assert (tmp_path / "media" / sha).read_bytes() == PNG
    index = tmp_path / "media" / "index" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"
    meta = json.loads(index.read_text())
    assert meta["url"] == url and meta["sha256"] == sha
    assert meta["content_type"] == "image/png" and meta["filename"] == "img.png"
    assert not list((tmp_path / "media").glob("*.tmp")) and not list((tmp_path / "media").glob(".*"))

    async with MediaFetcher(settings) as f:
        assert await f.fetch(url) == first
        with pytest.raises(MediaTooLarge):
            await f.fetch(url, max_bytes=10)
        with pytest.raises(MediaTypeNotAllowed):
            await f.fetch(url, allowed_types=("image/gif",))
    assert server.hits["/img.png"] == 1


async def test_disk_cache_with_wrong_bytes_is_fetched_again(server: Server, tmp_path: Path) -> None:
    settings = MediaSettings(allow_private=True, cache_dir=tmp_path)
    async with MediaFetcher(settings) as f:
        blob = await f.fetch(server.url("/img.png"))
    (tmp_path / blob.sha256).write_bytes(b"corrupted")
    async with MediaFetcher(settings) as f:
        assert (await f.fetch(server.url("/img.png"))).data == PNG
    assert server.hits["/img.png"] == 2
    assert (tmp_path / blob.sha256).read_bytes() == PNG


async def test_memory_cache_is_bounded(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True), memory_cache_bytes=len(PNG) + len(GIF)) as f:
        await f.fetch(server.url("/img.png"))
        await f.fetch(server.url("/other.png"))  # evicts /img.png
        await f.fetch(server.url("/img.png"))
    assert server.hits["/img.png"] == 2


async def test_concurrent_fetches_share_one_download(server: Server, fetcher: MediaFetcher) -> None:
    blobs = await asyncio.gather(*(fetcher.fetch(server.url("/slow.jpg")) for _ in range(5)))
    assert server.hits["/slow.jpg"] == 1
    assert len({b.sha256 for b in blobs}) == 1
    assert fetcher._locks == {}  # per-URL locks are dropped when nobody waits


async def test_concurrent_waiter_with_tighter_limit_gets_its_own_error(server: Server, fetcher: MediaFetcher) -> None:
    loose, tight = await asyncio.gather(
        fetcher.fetch(server.url("/slow.jpg")),
        fetcher.fetch(server.url("/slow.jpg"), allowed_types=("image/png",)),
        return_exceptions=True,
    )
    assert isinstance(loose, MediaBlob)
    assert isinstance(tight, MediaTypeNotAllowed)
    assert server.hits["/slow.jpg"] == 1


async def test_failures_are_not_cached(server: Server, fetcher: MediaFetcher) -> None:
    with pytest.raises(MediaUnavailable):
        await fetcher.fetch(server.url("/flaky.png"))
    assert (await fetcher.fetch(server.url("/flaky.png"))).data == PNG
    assert server.hits["/flaky.png"] == 2


# --- availability -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "retryable", "retry_after"),
    [
        ("/busy.png", 503, True, 7.0),
        ("/limited.png", 429, True, None),
        ("/missing.png", 404, False, None),
        ("/gone.png", 410, False, None),
        ("/forbidden.png", 403, False, None),
    ],
)
async def test_http_errors(
    server: Server, fetcher: MediaFetcher, path: str, status: int, retryable: bool, retry_after: float | None
) -> None:
    with pytest.raises(MediaUnavailable) as info:
        await fetcher.fetch(server.url(path))
    assert info.value.status == status
    assert info.value.retryable is retryable
    assert info.value.retry_after == retry_after
    assert str(status) in str(info.value)


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with MediaFetcher(MediaSettings(allow_private=True)) as f:
        with pytest.raises(MediaUnavailable) as info:
            await f.fetch(f"http://127.0.0.1:{port}/img.png")
    assert info.value.status is None and info.value.retryable


async def test_timeout_is_retryable(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True, timeout=0.2)) as f:
        with pytest.raises(MediaUnavailable, match="timed out") as info:
            await f.fetch(server.url("/hang.png"))
    assert info.value.retryable and info.value.status is None


# --- lifecycle ----------------------------------------------------------------------------------------------


async def test_context_manager_closes_own_session(server: Server) -> None:
    async with MediaFetcher(MediaSettings(allow_private=True)) as f:
        await f.fetch(server.url("/img.png"))
        session = f._session
    assert session is not None and session.closed
    # A fetcher is shared by an engine's channels and outlives a stop/start: a later fetch opens a new session.
    blob = await f.fetch(server.url("/img.png"))
    assert blob.data and f._session is not session
    await f.close()
    await f.close()  # idempotent


async def test_adapters_fetch_images_through_one_mapping_onto_the_taxonomy() -> None:
    """Adapter.fetch_image: a private address is a Permanent failure naming it (no request is made)."""
    from syndicate.delivery import Permanent
    from tests.support import ScriptedAdapter, ScriptedOptions

    adapter = ScriptedAdapter("c", ScriptedOptions(), timeout=5)
    try:
        with pytest.raises(Permanent) as info:
            await adapter.fetch_image(
                "http://10.0.0.5/cover.png",
                max_bytes=1_000_000,
                allowed_types=("image/png",),
                what="cover image",
                requirement="PNG under 1 MB",
            )
    finally:
        await adapter.close_media()
    assert "cover image http://10.0.0.5/cover.png" in info.value.reason and "10.0.0.5" in str(info.value)
    assert "private" in info.value.reason


# --- [media] allow_hosts: the shipped default config -------------------------------------------------------


def shipped_media() -> MediaSettings:
    from syndicate.config import load_config

    return load_config(Path(__file__).resolve().parents[2] / "config" / "syndicate.toml", env={}).media


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://169.254.169.254/latest/meta-data/iam.png", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/a.png", "10.0.0.1 is a private address"),
        ("http://127.0.0.1:9/a.png", "127.0.0.1 is a loopback address"),  # loopback, but not the sandbox's port
        ("http://[::1]:8765/a.png", "is a loopback address"),  # the sandbox's port on another host
    ],
)
async def test_the_shipped_config_refuses_every_private_address_but_the_sandboxs(url: str, named: str) -> None:
    """It used to ship allow_private = true, so an image on a cloud metadata address was fetched."""
    async with MediaFetcher(shipped_media()) as f:
        with pytest.raises(MediaRefused, match=re.escape(named)):
            await f.fetch(url)


async def test_a_name_resolving_to_a_private_address_is_refused_by_the_shipped_config(server: Server) -> None:
    url = f"http://localhost:{server.port}/img.png"
    async with MediaFetcher(shipped_media()) as f:
        with pytest.raises(MediaRefused, match="localhost resolves to a refused address"):
            await f.fetch(url)
    assert server.hits["/img.png"] == 0


async def test_an_allowed_host_and_port_is_fetched_and_only_that_pair(server: Server) -> None:
    allowed = MediaSettings(allow_hosts=frozenset({("127.0.0.1", server.port)}))
    async with MediaFetcher(allowed) as f:
        assert (await f.fetch(server.url("/img.png"))).data == PNG
        with pytest.raises(MediaRefused, match="localhost resolves to a refused address"):
            await f.fetch(f"http://localhost:{server.port}/img.png")  # the same address by another name


@pytest.mark.parametrize("entry", ["127.0.0.1", "10.0.0.0/8:80", "*.example.cn:443", "host:0", "host:99999", ":80"])
def test_allow_hosts_entries_must_be_exact_host_and_port(entry: str) -> None:
    from syndicate.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"\[media\] allow_hosts"):
        parse_config({"media": {"allow_hosts": [entry]}}, source="t.toml", env={})
