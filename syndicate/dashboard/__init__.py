"""The operations dashboard `syndicate serve` shows at ``/``: board, story pages, failures, channel health.

Server-rendered with Jinja2 (autoescape on: story text is escaped everywhere) plus one small plain JavaScript file
for the board's live refresh and the failure list's "select all". Every page needs the API token, entered once on
the login page (wrong tokens throttled, ``throttle``) and kept as a signed cookie (HttpOnly, SameSite=Strict)
naming a session the store keeps (``auth``: logout and ``syndicate sessions revoke-all`` end it for good); every
POST carries the session's CSRF token and must come from the dashboard's origin (``site``: ``[server] public_url``
behind a proxy); every redirect goes through ``urls.local_path``. Every action goes through
``syndicate.operations``, the same layer as the CLI and the API, so `replay` here selects exactly what `syndicate
replay` would.
"""

from __future__ import annotations

import logging
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy

from syndicate.appkeys import CLOCK, ENGINE, SETTINGS
from syndicate.operations import (
    ReplaySelection,
    mark_landed,
    parse_duration,
    parse_time,
    plan_replay,
    requeue,
    story_status,
)
from syndicate.reach import METRICS, build_report, story_reach_view
from syndicate.store.base import PAUSED_INDEFINITELY, DeliveryFilter, NotFound, State

from . import auth
from .i18n import pick_lang, translate
from .reach_views import (
    CHART_HEIGHT,
    CHART_WIDTH,
    channel_rows,
    ranking_rows,
    section_rows,
    story_reach_rows,
    story_reach_total,
)
from .site import Site, site_of
from .throttle import LoginThrottle
from .urls import local_path
from .views import (
    board_rows,
    channel_health,
    failure_row,
    hhmm,
    story_view,
)

__all__ = ["setup_dashboard"]

log = logging.getLogger("syndicate.dashboard")

PACKAGE_DIR = Path(__file__).parent
STATIC_PREFIX = "/dashboard/static"
STATIC_ROUTE = "dashboard_static"
FAILURES_LIMIT = 500
#: Delivery ids are signed 64-bit keys in both stores.
MAX_DELIVERY_ID = 2**63 - 1
MAX_ID_DIGITS = len(str(MAX_DELIVERY_ID))
PAUSE_CHOICES = ("15m", "1h", "4h", "1d", "")
#: The reach page's periods (the weekly report is the default).
REACH_PERIODS = ("1d", "7d", "30d")
REACH_DEFAULT_PERIOD = "7d"
#: Stories the reach page ranks (the CSV export takes every story of the period).
REACH_PAGE_LIMIT = 100
FLASHES = {
    "requeued",
    "landed",
    "not_unknown",
    "paused",
    "resumed",
    "bad_input",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Dashboard:
    templates: jinja2.Environment
    throttle: LoginThrottle


DASHBOARD = web.AppKey("dashboard", Dashboard)


def setup_dashboard(app: web.Application) -> None:
    """Mount the dashboard on an app made by ``syndicate.server.create_app`` (it reads the settings, engine and
    clock from there)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    app[DASHBOARD] = Dashboard(templates=env, throttle=LoginThrottle())
    app.router.add_get("/", board_page)
    app.router.add_get("/dashboard/board.json", board_fragment)
    app.router.add_get("/dashboard/stories/{story_id}", story_page)
    app.router.add_get("/dashboard/failures", failures_page)
    app.router.add_post("/dashboard/replay", replay_action)
    app.router.add_post("/dashboard/deliveries/{delivery_id}/landed", landed_action)
    app.router.add_post("/dashboard/deliveries/{delivery_id}/resend", resend_action)
    app.router.add_get("/dashboard/channels", channels_page)
    app.router.add_get("/dashboard/reach", reach_page)
    app.router.add_get("/dashboard/reach.csv", reach_csv)
    app.router.add_post("/dashboard/channels/{channel}/pause", pause_action)
    app.router.add_post("/dashboard/channels/{channel}/resume", resume_action)
    app.router.add_get("/dashboard/login", login_page)
    app.router.add_post("/dashboard/login", login_action)
    app.router.add_post("/dashboard/logout", logout_action)
    app.router.add_static(STATIC_PREFIX, PACKAGE_DIR / "static", name=STATIC_ROUTE, append_version=True)


# --- request helpers ---------------------------------------------------------------------------------------------


def _lang(request: web.Request) -> str:
    return pick_lang(request.query.get("lang"))


def _url(lang: str, path: str, **params: Any) -> str:
    """A dashboard link that keeps the interface language."""
    query = {k: v for k, v in params.items() if v not in (None, "")}
    if lang == "en":
        query["lang"] = "en"
    return path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")


def _see_other(request: web.Request, target: str | None, default: str) -> web.HTTPSeeOther:
    """Every redirect the dashboard makes: to ``target`` when it is a path of this dashboard, else ``default``
    (``target`` may come from the request: no open redirect)."""
    return web.HTTPSeeOther(_site(request).base + local_path(target, default), headers=SECURITY_HEADERS)


def _site(request: web.Request) -> Site:
    return site_of(request, request.app[SETTINGS].server)


def _token(request: web.Request) -> str:
    return request.app[SETTINGS].server.api_token or ""


async def _session(request: web.Request) -> auth.Session | None:
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    return await auth.read_session(request.app[ENGINE].store, cookie, _token(request), now=request.app[CLOCK]())


def _render(
    request: web.Request,
    template: str,
    *,
    session: auth.Session | None,
    status: int = 200,
    **context: Any,
) -> web.Response:
    lang = _lang(request)
    switch = dict(request.query)
    if lang == "en":
        switch.pop("lang", None)
    else:
        switch["lang"] = "en"
    flash = request.query.get("flash")
    flash_text = None
    if flash in FLASHES:
        flash_text = translate(
            lang, f"flash_{flash}", n=request.query.get("n", ""), problem=request.query.get("problem", "")
        )
    html = (
        request.app[DASHBOARD]
        .templates.get_template(template)
        .render(
            lang=lang,
            t=lambda key, **kw: translate(lang, key, **kw),
            u=lambda path, **kw: _url(lang, path, **kw),
            static=lambda name: str(request.app.router[STATIC_ROUTE].url_for(filename=name)),
            switch_url=request.path + ("?" + urllib.parse.urlencode(switch) if switch else ""),
            path=request.path,
            session=session,
            csrf=session.csrf if session else "",
            flash=flash_text,
            flash_bad=flash in ("bad_input", "not_unknown"),
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS)


def _to_login(request: web.Request) -> web.HTTPSeeOther:
    # The raw path: a story id with "?" or "%" in it must come back as the same page.
    target = request.rel_url.raw_path_qs if request.method == "GET" else "/"
    login = _url(_lang(request), "/dashboard/login", next=local_path(target, "/"))
    return _see_other(request, login, "/dashboard/login")


async def _need_session(request: web.Request) -> auth.Session:
    session = await _session(request)
    if session is None:
        raise _to_login(request)
    return session


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a POST comes from; one from another site is refused even with a valid cookie."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # older browsers omit it on same-origin posts; the CSRF token still has to match
    # Behind a TLS-terminating proxy the browser's origin is https://public.host, not what this process sees.
    return origin == _site(request).origin


async def _checked_form(request: web.Request) -> tuple[auth.Session, MultiDictProxy[Any]]:
    """The session and the form of a dashboard action, after the CSRF token and origin checks."""
    session = await _need_session(request)
    form = await request.post()
    if not _same_origin(request) or not auth.csrf_matches(_field(form, "csrf"), session.csrf):
        raise _Refused(_render(request, "message.html.j2", session=session, status=403, message_key="csrf_failed"))
    return session, form


class _Refused(web.HTTPForbidden):
    """A refusal (403, or the 4xx of the page it carries) with its HTML page: the server's error middleware would
    otherwise turn it into JSON."""

    def __init__(self, response: web.Response) -> None:
        super().__init__()
        self.page = response


def _field(form: MultiDictProxy[Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _back(request: web.Request, form: MultiDictProxy[Any], default: str, **flash: Any) -> web.HTTPSeeOther:
    """Redirect after an action (post/redirect/get), with a flash message in the query."""
    target = local_path(_field(form, "back"), default)
    parts = urllib.parse.urlsplit(target)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in ("flash", "n", "problem", "lang")]
    query += [(k, str(v)) for k, v in flash.items()]
    if _lang(request) == "en" or _field(form, "lang") == "en":
        query.append(("lang", "en"))
    return _see_other(request, parts.path + ("?" + urllib.parse.urlencode(query) if query else ""), default)


def _form_lang(request: web.Request, form: MultiDictProxy[Any]) -> str:
    return "en" if _field(form, "lang") == "en" or _lang(request) == "en" else "zh"


async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Refused as exc:
        return exc.page


def _channel_names(request: web.Request) -> list[str]:
    return list(request.app[SETTINGS].channels)


# --- pages -------------------------------------------------------------------------------------------------------


async def board_page(request: web.Request) -> web.StreamResponse:
    session = await _need_session(request)
    lang = _lang(request)
    now = request.app[CLOCK]()
    channels = _channel_names(request)
    rows = await board_rows(request.app[ENGINE].store, channels, lang=lang, now=now)
    return _render(request, "board.html.j2", session=session, channels=channels, rows=rows, updated=hhmm(now))


async def board_fragment(request: web.Request) -> web.StreamResponse:
    """The board's rows as HTML, for the page's live refresh (escaped here, inserted as is by the script)."""
    if await _session(request) is None:
        login = _site(request).base + "/dashboard/login"
        return web.json_response({"error": "unauthorized", "login": login}, status=401)
    lang = _lang(request)
    now = request.app[CLOCK]()
    channels = _channel_names(request)
    rows = await board_rows(request.app[ENGINE].store, channels, lang=lang, now=now)
    html = (
        request.app[DASHBOARD]
        .templates.get_template("_board_rows.html.j2")
        .render(
            rows=rows,
            channels=channels,
            t=lambda key, **kw: translate(lang, key, **kw),
            u=lambda path, **kw: _url(lang, path, **kw),
        )
    )
    return web.json_response({"rows": html, "updated": hhmm(now)}, headers=SECURITY_HEADERS)


async def story_page(request: web.Request) -> web.StreamResponse:
    session = await _need_session(request)
    story_id = request.match_info["story_id"]
    store = request.app[ENGINE].store
    lang = _lang(request)
    try:
        status = await story_status(store, story_id)
    except NotFound:
        return _render(
            request,
            "message.html.j2",
            session=session,
            status=404,
            message_key="story_not_found",
            message_params={"id": story_id},
        )
    deliveries = {d.id: d for d in await store.list_deliveries(DeliveryFilter(story_id=story_id))}
    kinds = {name: ch.kind for name, ch in request.app[SETTINGS].channels.items()}
    view = story_view(status, lang=lang, now=request.app[CLOCK](), deliveries=deliveries, kinds=kinds)
    reach = story_reach_view(story_id, await store.story_reach(story_id))
    return _render(
        request,
        "story.html.j2",
        session=session,
        story=view,
        metrics=[m.value for m in METRICS],
        reach_rows=story_reach_rows(reach, counted=translate(lang, "reach_counted")),
        reach_total=story_reach_total(reach),
        chart_width=CHART_WIDTH,
        chart_height=CHART_HEIGHT,
    )


def _reach_selection(request: web.Request) -> tuple[str, str, str, str | None]:
    """The reach page's period, channel and section from the query, and what is wrong with them (or None)."""
    period = request.query.get("since", REACH_DEFAULT_PERIOD)
    channel = request.query.get("channel", "")
    section = request.query.get("section", "").strip()[:200]
    problem = None
    if period not in REACH_PERIODS:
        problem, period = f"since: {period[:40]!r} (1d, 7d, 30d)", REACH_DEFAULT_PERIOD
    if channel and channel not in request.app[SETTINGS].channels:
        problem, channel = f"channel: {channel[:80]!r}", ""
    return period, channel, section, problem


async def reach_page(request: web.Request) -> web.StreamResponse:
    """Stories ranked by reach over a period, with the same figures per channel and per section."""
    session = await _need_session(request)
    lang = _lang(request)
    now = request.app[CLOCK]()
    period, channel, section, problem = _reach_selection(request)
    report = await build_report(
        request.app[ENGINE].store,
        since=parse_time(period, now=now),
        until=now,
        channel=channel or None,
        section=section or None,
        limit=REACH_PAGE_LIMIT,
    )
    return _render(
        request,
        "reach.html.j2",
        session=session,
        metrics=[m.value for m in METRICS],
        periods=REACH_PERIODS,
        period=period,
        channel=channel,
        section=section,
        channels=_channel_names(request),
        problem=problem,
        stories=ranking_rows(report),
        by_channel=channel_rows(report),
        by_section=section_rows(report, no_section=translate(lang, "reach_no_section")),
        csv_url=_url("zh", "/dashboard/reach.csv", since=period, channel=channel, section=section),
    )


async def reach_csv(request: web.Request) -> web.StreamResponse:
    """The reach page's ranking as CSV for the weekly report: one row per story × channel, every story."""
    await _need_session(request)
    now = request.app[CLOCK]()
    period, channel, section, _ = _reach_selection(request)
    report = await build_report(
        request.app[ENGINE].store,
        since=parse_time(period, now=now),
        until=now,
        channel=channel or None,
        section=section or None,
    )
    return web.Response(
        text=report.to_csv(),
        content_type="text/csv",
        charset="utf-8",
        headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="reach-{period}.csv"'},
    )


async def failures_page(request: web.Request) -> web.StreamResponse:
    session = await _need_session(request)
    lang = _lang(request)
    now = request.app[CLOCK]()
    store = request.app[ENGINE].store
    channel = request.query.get("channel", "")
    error_class = request.query.get("error_class", "")
    since_text = request.query.get("since", "")
    problem = None
    since = None
    if since_text:
        try:
            since = parse_time(since_text, now=now)
        except ValueError as exc:
            problem = str(exc)
    every = await store.list_deliveries(DeliveryFilter(states=[State.FAILED, State.UNKNOWN], limit=FAILURES_LIMIT * 4))
    rows = await store.list_deliveries(
        DeliveryFilter(
            states=[State.FAILED, State.UNKNOWN],
            channels=[channel] if channel else None,
            error_classes=[error_class] if error_class else None,
            since=since,
            limit=FAILURES_LIMIT,
        )
    )
    return _render(
        request,
        "failures.html.j2",
        session=session,
        rows=[failure_row(d, lang=lang, now=now) for d in reversed(rows)],
        channels=_channel_names(request),
        error_classes=sorted({d.last_error_class for d in every if d.last_error_class}),
        channel=channel,
        error_class=error_class,
        since=since_text,
        problem=problem,
    )


async def channels_page(request: web.Request) -> web.StreamResponse:
    session = await _need_session(request)
    settings = request.app[SETTINGS]
    health = await channel_health(
        request.app[ENGINE].store,
        {name: (ch.kind, ch.enabled) for name, ch in settings.channels.items()},
        lang=_lang(request),
        now=request.app[CLOCK](),
    )
    return _render(request, "channels.html.j2", session=session, channels=health, pause_choices=PAUSE_CHOICES)


# --- actions -----------------------------------------------------------------------------------------------------


def _selection_from(form: MultiDictProxy[Any], now: float) -> ReplaySelection:
    """The operator's choice on the failures page as the CLI's ReplaySelection: ticked ids, or every failed and
    unknown delivery matching the page's filters."""
    if _field(form, "scope") == "all":
        since_text = _field(form, "since")
        return ReplaySelection(
            channels=[c for c in [_field(form, "channel")] if c],
            error_classes=[e for e in [_field(form, "error_class")] if e],
            since=parse_time(since_text, now=now) if since_text else None,
        )
    ids = [_form_delivery_id(value) for value in form.getall("id", [])]
    if not ids:
        raise ValueError("tick at least one delivery")
    return ReplaySelection(ids=ids)


async def _replay(request: web.Request) -> web.StreamResponse:
    session, form = await _checked_form(request)
    now = request.app[CLOCK]()
    engine = request.app[ENGINE]
    try:
        selection = _selection_from(form, now)
    except BadDeliveryId as exc:
        page = _render(
            request,
            "message.html.j2",
            session=session,
            status=400,
            message_key="bad_input",
            message_params={"problem": str(exc)},
        )
        raise _Refused(page) from None
    except ValueError as exc:
        raise _back(request, form, "/dashboard/failures", flash="bad_input", problem=str(exc)) from None
    plan = await plan_replay(engine.store, selection)
    if _field(form, "confirm") != "yes":
        lang = _form_lang(request, form)
        channels = sorted({d.channel for d in plan.replayable})
        return _render(
            request,
            "confirm.html.j2",
            session=session,
            plan=plan,
            count_text=translate(lang, "confirm_text", n=len(plan.replayable), channels="、".join(channels)),
            back=local_path(_field(form, "back"), "/dashboard/failures"),
        )
    done = await requeue(engine.store, plan.replayable, now=now, force=False)
    engine.wake()
    raise _back(request, form, "/dashboard/failures", flash="requeued", n=len(done))


async def replay_action(request: web.Request) -> web.StreamResponse:
    return await _guard(request, _replay)


class BadDeliveryId(ValueError):
    """A ticked id that no delivery can have: the failures page never sends one, so the form was forged."""


def _parse_delivery_id(value: object) -> int | None:
    """A delivery id, or None when ``value`` cannot be one: ids are the store's BIGINT keys, and a larger number
    would overflow the database driver (a 500) instead of being simply "no such delivery"."""
    text = value if isinstance(value, str) else ""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_ID_DIGITS:
        return None
    number = int(text)
    return number if 1 <= number <= MAX_DELIVERY_ID else None


def _form_delivery_id(value: object) -> int:
    number = _parse_delivery_id(value)
    if number is None:
        raise BadDeliveryId(f"id: {str(value)[:40]!r} is not a delivery id (an integer 1..{MAX_DELIVERY_ID})")
    return number


def _delivery_id(request: web.Request) -> int:
    number = _parse_delivery_id(request.match_info["delivery_id"])
    if number is None:
        raise web.HTTPNotFound(
            text=f"no delivery {request.match_info['delivery_id'][:40]!r}: ids are integers 1..{MAX_DELIVERY_ID}"
        )
    return number


async def _landed(request: web.Request) -> web.StreamResponse:
    _, form = await _checked_form(request)
    delivery_id = _delivery_id(request)
    try:
        changed = await mark_landed(
            request.app[ENGINE].store, delivery_id, _field(form, "remote"), now=request.app[CLOCK](), who="dashboard"
        )
    except ValueError as exc:
        raise _back(request, form, "/dashboard/failures", flash="bad_input", problem=str(exc)) from None
    raise _back(request, form, "/dashboard/failures", flash="landed" if changed else "not_unknown")


async def landed_action(request: web.Request) -> web.StreamResponse:
    return await _guard(request, _landed)


async def _resend(request: web.Request) -> web.StreamResponse:
    """Resend an ``unknown`` delivery without asking the platform first (the CLI's ``replay --force``)."""
    _, form = await _checked_form(request)
    delivery_id = _delivery_id(request)
    engine = request.app[ENGINE]
    plan = await plan_replay(engine.store, ReplaySelection(ids=[delivery_id], states=[State.UNKNOWN], force=True))
    if not plan.replayable:
        raise _back(request, form, "/dashboard/failures", flash="not_unknown")
    done = await requeue(engine.store, plan.replayable, now=request.app[CLOCK](), force=True)
    engine.wake()
    raise _back(request, form, "/dashboard/failures", flash="requeued", n=len(done))


async def resend_action(request: web.Request) -> web.StreamResponse:
    return await _guard(request, _resend)


def _configured_channel(request: web.Request) -> str:
    name = request.match_info["channel"]
    if name not in request.app[SETTINGS].channels:
        raise web.HTTPNotFound(text=f"no channel {name!r} is configured")
    return name


async def _pause(request: web.Request) -> web.StreamResponse:
    _, form = await _checked_form(request)
    name = _configured_channel(request)
    now = request.app[CLOCK]()
    duration = _field(form, "for")
    if duration not in PAUSE_CHOICES:
        raise _back(request, form, "/dashboard/channels", flash="bad_input", problem=f"pause length {duration!r}")
    until = now + parse_duration(duration) if duration else PAUSED_INDEFINITELY
    reason = _field(form, "reason").strip()[:500] or translate(_form_lang(request, form), "ch_reason_default")
    await request.app[ENGINE].store.pause_channel(name, until=until, reason=reason, now=now)
    raise _back(request, form, "/dashboard/channels", flash="paused")


async def pause_action(request: web.Request) -> web.StreamResponse:
    return await _guard(request, _pause)


async def _resume(request: web.Request) -> web.StreamResponse:
    _, form = await _checked_form(request)
    name = _configured_channel(request)
    engine = request.app[ENGINE]
    await engine.store.resume_channel(name, now=request.app[CLOCK]())
    engine.wake()
    raise _back(request, form, "/dashboard/channels", flash="resumed")


async def resume_action(request: web.Request) -> web.StreamResponse:
    return await _guard(request, _resume)


# --- login -------------------------------------------------------------------------------------------------------


def _login_form(
    request: web.Request, *, status: int = 200, wrong: bool = False, wait: int | None = None
) -> web.Response:
    csrf = request.cookies.get(auth.LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = _render(
        request,
        "login.html.j2",
        session=None,
        status=status,
        login_csrf=csrf,
        wrong=wrong,
        wait=wait,
        off=not _token(request),
        next=local_path(request.query.get("next"), "/"),
    )
    if wait is not None:
        response.headers["Retry-After"] = str(wait)
    response.set_cookie(
        auth.LOGIN_CSRF_COOKIE,
        csrf,
        path="/dashboard/login",
        httponly=True,
        samesite="Strict",
        secure=_site(request).secure,
        max_age=3600,
    )
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    if not _token(request):
        return _login_form(request, status=503)
    if await _session(request) is not None:
        raise _see_other(request, request.query.get("next"), _url(_lang(request), "/"))
    return _login_form(request)


async def login_action(request: web.Request) -> web.StreamResponse:
    token = _token(request)
    if not token:
        return _login_form(request, status=503)
    form = await request.post()
    cookie = request.cookies.get(auth.LOGIN_CSRF_COOKIE)
    if not _same_origin(request) or not cookie or not auth.csrf_matches(_field(form, "csrf"), cookie):
        return _render(request, "message.html.j2", session=None, status=403, message_key="csrf_failed")
    site = _site(request)
    now = request.app[CLOCK]()
    throttle = request.app[DASHBOARD].throttle
    # Checked before the token: a refused attempt must not tell a guesser whether it was right.
    refusal = throttle.check(site.client, now=now)
    if refusal is not None:
        log.warning(
            "dashboard login refused for %s: too many failed logins (%s), retry after %d s",
            site.client,
            "from this address" if refusal.scope == "client" else "from all addresses",
            refusal.retry_after,
            extra={"client": site.client, "scope": refusal.scope},
        )
        return _login_form(request, status=429, wait=refusal.retry_after)
    if not auth.token_matches(_field(form, "token"), token):
        throttle.failed(site.client, now=now)
        log.warning("dashboard login with a wrong token from %s", site.client, extra={"client": site.client})
        return _login_form(request, status=401, wrong=True)
    throttle.succeeded(site.client)
    target = local_path(_field(form, "next"), "/")
    if _field(form, "lang") == "en" and "lang=" not in target:
        target += ("&" if "?" in target else "?") + "lang=en"
    response = _see_other(request, target, "/")
    response.set_cookie(
        auth.SESSION_COOKIE,
        await auth.new_session(request.app[ENGINE].store, token, now=now),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=site.secure,
        max_age=auth.SESSION_SECONDS,
    )
    response.del_cookie(auth.LOGIN_CSRF_COOKIE, path="/dashboard/login")
    log.info("dashboard login from %s", site.client, extra={"client": site.client})
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    session, form = await _checked_form(request)
    # Ended in the store, not just in this browser: a copy of the cookie is worth nothing from now on.
    await auth.end_session(request.app[ENGINE].store, session, now=request.app[CLOCK]())
    response = _see_other(request, _url(_form_lang(request, form), "/dashboard/login"), "/dashboard/login")
    response.del_cookie(auth.SESSION_COOKIE, path="/")
    raise response


async def logout_action(request: web.Request) -> web.StreamResponse:
    return await _guard(request, _logout)
