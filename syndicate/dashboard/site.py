"""Who is asking and where the browser thinks it is: the origin, https or not, the client's address.

Behind a TLS-terminating proxy the service sees plain http from the proxy's address, while the browser is on
``https://syndicate.newsroom.example``. ``[server] public_url`` names that address; ``[server] trusted_proxies``
lets the X-Forwarded-Proto, -Host and -For headers of those proxies (and only theirs) say it per request. Neither
is trusted by default: any client can send X-Forwarded-* headers.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web

from syndicate.config import ServerSettings

#: What X-Forwarded-Host may hold: a host name or bracketed IPv6 address, an optional port.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Site:
    #: ``scheme://host[:port]``, as a browser on the dashboard sends it in ``Origin``.
    origin: str
    #: The browser is on https: the cookies get ``Secure``.
    secure: bool
    #: The client's address (for the login throttle and the logs).
    client: str
    #: The base of absolute links (``public_url``), or "" for relative ones.
    base: str


@lru_cache(maxsize=16)
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _trusted(address: str | None, networks: tuple[Network, ...]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _first(request: web.Request, header: str) -> str:
    """The first value of a comma-separated forwarding header (the hop nearest the browser)."""
    return request.headers.get(header, "").split(",")[0].strip()


def _client(request: web.Request, networks: tuple[Network, ...]) -> str:
    """The address nearest the service that is not a trusted proxy: each proxy appends the address it saw to
    X-Forwarded-For, so the entries left of the last untrusted one may be forged by the client."""
    remote = request.remote or "unknown"
    if not _trusted(remote, networks):
        return remote
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop[:64]
    return hops[0][:64] if hops else remote


def site_of(request: web.Request, server: ServerSettings) -> Site:
    networks = _networks(server.trusted_proxies)
    from_proxy = _trusted(request.remote, networks)
    client = _client(request, networks)
    if server.public_url:
        return Site(server.public_url, server.public_url.startswith("https:"), client, server.public_url)
    scheme, host = request.scheme, request.host
    if from_proxy:
        proto = _first(request, "X-Forwarded-Proto").lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded_host = _first(request, "X-Forwarded-Host")
        if _HOST.fullmatch(forwarded_host):
            host = forwarded_host.lower()
    return Site(f"{scheme}://{host}", scheme == "https", client, "")
