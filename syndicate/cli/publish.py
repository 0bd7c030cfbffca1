"""`syndicate publish`: validate story documents and enqueue them, into the local store or through a running
server's signed publish hook (``--url``); both report one result shape per document."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import click
from rich.markup import escape

from syndicate.cli.common import (
    RuntimeFailure,
    config_option,
    connected_store,
    load_settings,
    out,
    print_json,
    run_async,
)
from syndicate.cli.documents import Document, print_bad, read_files
from syndicate.config import Settings
from syndicate.engine import Engine
from syndicate.httputil import json_object
from syndicate.ninjs import read_document
from syndicate.signing import SIGNATURE_HEADER, sign
from syndicate.store.base import StaleVersion, VersionConflict
from syndicate.story import StoryValidationError


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@config_option
@click.option(
    "--url",
    metavar="URL",
    help="POST each document to a running server's publish hook (http://host:port or the full /v1/stories URL), "
    "signed with [server] hook_secret, instead of writing to the local store.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def publish(
    ctx: click.Context, files: tuple[str, ...], config_path: Path | None, url: str | None, as_json: bool
) -> None:
    """Validate story documents and enqueue them for every channel.

    FILES are canonical story JSON or ninjs 2.x; a file may hold one document, a JSON array, or JSON Lines.
    Use - to read stdin (handy for backfills). A bad document is reported by name and line and does not stop
    the good ones; the exit code is 1 if any was rejected.
    """
    settings = load_settings(ctx, config_path)
    fatal: str | None = None
    if url is not None:
        endpoint = _hook_url(url)
        secret = settings.server.hook_secret
        if not secret:
            raise click.UsageError(
                f"{settings.source}: [server] hook_secret is not set: publish --url signs every request with it "
                f"({SIGNATURE_HEADER})"
            )
        results, fatal = run_async(_publish_remote(endpoint, secret, read_files(files)))
    else:
        results = run_async(_publish_local(settings, read_files(files)))

    bad = [r for r in results if not r["ok"]]
    if as_json:
        print_json({"results": results})
    else:
        for r in results:
            if r["ok"]:
                what = "queued" if r["new"] else "already accepted (no new work)"
                chans = ", ".join(f"{d['channel']}:{d['action']}" for d in r["deliveries"]) or "no channel"
                out.print(
                    f"[green]ok[/]   {escape(r['source'])}: {escape(r['story_id'])} v{r['version']} {what} -> {chans}",
                    soft_wrap=True,
                )
            else:
                print_bad(r["source"], r["errors"])
        out.print(f"{len(results) - len(bad)} accepted, {len(bad)} rejected")
    if fatal is not None:
        raise RuntimeFailure(fatal)
    if bad:
        sys.exit(1)


def _accepted(
    source: str, story_id: str, version: Any, new: bool, deliveries: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """One accepted document, as ``publish`` reports it (local store or server)."""
    return {
        "source": source,
        "ok": True,
        "story_id": story_id,
        "version": version,
        "new": new,
        "deliveries": [
            {"id": d.get("id"), "channel": d.get("channel"), "action": d.get("action"), "state": d.get("state")}
            for d in deliveries
        ],
    }


async def _publish_local(settings: Settings, docs: Sequence[Document]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with connected_store(settings) as store:
        engine = Engine(settings, store)
        for doc in docs:
            if doc.error is not None:
                results.append({"source": doc.where, "ok": False, "errors": [doc.error]})
                continue
            try:
                story = read_document(doc.obj)
                result = await engine.accept(story)
            except StoryValidationError as exc:
                problems = [f"{e.path}: {e.problem}" for e in exc.errors]
                results.append({"source": doc.where, "ok": False, "errors": problems})
                continue
            except (StaleVersion, VersionConflict) as exc:
                results.append({"source": doc.where, "ok": False, "errors": [str(exc)]})
                continue
            views = [
                {"id": d.id, "channel": d.channel, "action": d.action.value, "state": d.state.value}
                for d in result.deliveries
            ]
            results.append(_accepted(doc.where, result.story_id, result.version, result.created, views))
    return results


# --- publish --url: the server's publish hook --------------------------------------------------------------------

HOOK_PATH = "/v1/stories"
HOOK_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)


def _hook_url(url: str) -> str:
    """The server base (``http://host:port``) gets ``/v1/stories`` appended; the full endpoint is kept."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(
            f"{url!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)", param_hint="'--url'"
        ) from None
    path = parts.path.rstrip("/")
    if not path.endswith(HOOK_PATH):
        path += HOOK_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class _Signer:
    """Signs each request anew. The server accepts a signature once, so the same body sent twice in one run gets
    a later timestamp rather than the same signature."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._last: dict[str, int] = {}

    def __call__(self, body: bytes) -> str:
        key = hashlib.sha256(body).hexdigest()
        t = max(int(time.time()), self._last.get(key, 0) + 1)
        self._last[key] = t
        return sign(self.secret, body, timestamp=t)


def _content_type(obj: Any) -> str:
    """ninjs when the document has ``uri`` (and no canonical ``id``: the same rule as syndicate.ninjs.read_document)."""
    if isinstance(obj, dict) and "uri" in obj and "id" not in obj:
        return "application/ninjs+json"
    return "application/json"


async def _publish_remote(url: str, secret: str, docs: Sequence[Document]) -> tuple[list[dict[str, Any]], str | None]:
    """POST each document; returns the per-document results and, when the server could not be reached, why."""
    results: list[dict[str, Any]] = []
    signer = _Signer(secret)
    async with aiohttp.ClientSession(timeout=HOOK_TIMEOUT) as session:
        for doc in docs:
            if doc.error is not None:
                results.append({"source": doc.where, "ok": False, "errors": [doc.error]})
                continue
            raw = doc.raw if doc.raw is not None else json.dumps(doc.obj, ensure_ascii=False)
            body = raw.encode("utf-8")
            headers = {"Content-Type": _content_type(doc.obj)}
            try:
                for attempt in range(2):
                    headers[SIGNATURE_HEADER] = signer(body)
                    async with session.post(url, data=body, headers=headers) as resp:
                        status, text = resp.status, await resp.text(errors="replace")
                    answer = json_object(text)
                    if status == 401 and answer.get("error") == "replayed_signature" and attempt == 0:
                        # Another run sent the same bytes within this second: sign again in the next one.
                        await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
                        continue
                    break
            except aiohttp.ClientConnectorError as exc:
                reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
                return results, f"cannot reach the server at {url}: {reason}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                detail = str(exc) or type(exc).__name__
                return results, (
                    f"no answer from {url} for {doc.where} ({detail}): it may have been accepted; "
                    "sending the same version again is safe"
                )
            results.append(_hook_result(doc.where, url, status, answer, text))
    return results, None


def _hook_result(source: str, url: str, status: int, answer: dict[str, Any], text: str) -> dict[str, Any]:
    if status in (200, 202) and "story_id" in answer:
        return _accepted(
            source, answer["story_id"], answer.get("version"), status == 202, answer.get("deliveries") or []
        )
    message = answer.get("message")
    errors = answer.get("errors")
    if status == 422 and isinstance(errors, list) and errors:
        problems = [f"{e.get('path', '$')}: {e.get('problem', '')}" if isinstance(e, dict) else str(e) for e in errors]
    elif status == 409 and message:
        problems = [str(message)]  # stale version / conflict: worded as the local publish words it
    elif message:
        code = f" {answer['error']}" if answer.get("error") else ""
        hint = ": check [server] hook_secret matches the server's" if status == 401 else ""
        problems = [f"HTTP {status}{code}: {message}{hint}"]
    else:
        snippet = " ".join(text.split())[:200] or "(empty answer)"
        problems = [f"HTTP {status} from {url}: {snippet}"]
    return {"source": source, "ok": False, "status": status, "errors": problems}
