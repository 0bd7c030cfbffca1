"""Structured logs (one JSON object per line) that never carry a secret.

``configure_logging(settings)`` installs one handler on the root logger: a ``JsonFormatter`` (or a plain text one)
behind a ``RedactingFilter``. The filter replaces every configured secret and every credential-looking header value
with ``***`` in the message, its arguments, the extra fields and the exception text, before any formatter sees
the record.

Which values are secrets (``collect_secrets``):

* every string of every channel's options whose field name says so: it contains ``secret``, ``token``, ``passw``
  or ``credential``, or it is or ends in ``key``/``keys`` (``secret``, ``app_secret``, ``access_token``,
  ``master_secret``, ``app_key``, ``api_key``). ``app_key`` is an identifier rather than a secret on most
  platforms, but it is half of a credential pair and masking it costs nothing, so it is masked too;
* the values of static request headers (``headers`` tables) whose name looks like a credential (``Authorization``,
  ``Cookie``, ``X-Api-Key``, signature and token headers), with and without their ``Bearer``/``Basic`` scheme;
* ``[server] hook_secret`` and ``api_token`` (the same name rule over the server table);
* the password of the store URL (``postgresql://user:password@host/db``);
* anything registered at run time with ``register_secret`` (e.g. an access token an adapter obtained).

Whatever the configuration, ``redact`` also masks ``Authorization: <scheme> <value>``, bare ``Bearer <value>``,
``X-Syndicate-Signature: <value>`` and ``v1=<hex>`` signatures, passwords in URLs and credential query parameters
(``?access_token=…``).

Secrets shorter than ``MIN_SECRET_LENGTH`` (6) characters are not replaced by substring, since a short value such as
``"abc"`` would mask unrelated words everywhere; ``redacted_config`` masks secret fields by name whatever their
length, so logging the configuration never shows one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import quote, quote_plus, urlsplit

from pydantic import BaseModel, SecretBytes, SecretStr

if TYPE_CHECKING:
    from syndicate.config import Settings

__all__ = [
    "CONTEXT_FIELDS",
    "MASK",
    "MIN_SECRET_LENGTH",
    "JsonFormatter",
    "RedactingFilter",
    "Redactor",
    "TextFormatter",
    "collect_secrets",
    "configure_logging",
    "redact",
    "redacted_config",
    "register_secret",
    "reset_logging",
    "set_secrets",
]

MASK = "***"
#: Shorter secrets are not replaced by substring (too many false hits); see the module docstring.
MIN_SECRET_LENGTH = 6
#: Context fields a record may carry (``extra={...}``); the JSON formatter emits those present, in this order.
CONTEXT_FIELDS = (
    "story_id",
    "channel",
    "delivery_id",
    "action",
    "worker",
    "request_id",
    "status",
    "path",
    "method",
    "duration_ms",
    "error_class",
    "platform_code",
)

# --- what counts as a secret -----------------------------------------------------------------------------------

#: A config field holding a secret: secret, app_secret, access_token, master_secret, password, app_key, api_key...
_SECRET_NAME = re.compile(r"secret|token|passw|credential|keys?$|(?:^|[_-])keys?(?:[_-]|$)", re.IGNORECASE)
#: A request header carrying a credential: Authorization, Proxy-Authorization, Cookie, X-Api-Key, X-...-Signature.
_SECRET_HEADER = re.compile(r"auth|cookie|signature|secret|token|passw|credential|key", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"^\s*(?:bearer|basic|token|digest|apikey)\s+(\S+)\s*$", re.IGNORECASE)


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _is_secret_header(name: str) -> bool:
    return bool(_SECRET_HEADER.search(name))


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, SecretBytes):
        return value.get_secret_value().decode("utf-8", "replace")
    return value


def _strings(value: Any) -> Iterable[str]:
    """Every string inside ``value`` (a secret-named field: all of it is secret)."""
    value = _plain(value)
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _strings(getattr(value, name))


def _header_secrets(value: str) -> Iterable[str]:
    """The credential in a header value: ``Bearer abc`` -> ``abc`` (the log keeps showing the scheme)."""
    scheme = _AUTH_SCHEME.match(value)
    yield scheme.group(1) if scheme else value


def _model_secrets(model: BaseModel) -> Iterable[str]:
    for name in type(model).model_fields:
        value = _plain(getattr(model, name))
        if _is_secret_name(name):
            yield from _strings(value)
        elif isinstance(value, BaseModel):
            yield from _model_secrets(value)
        elif isinstance(value, Mapping):  # e.g. a channel's static headers
            for key, item in value.items():
                item = _plain(item)
                if isinstance(item, BaseModel):
                    yield from _model_secrets(item)
                elif _is_secret_name(str(key)) or _is_secret_header(str(key)):
                    for s in _strings(item):
                        yield from _header_secrets(s)


def collect_secrets(settings: Settings | None) -> set[str]:
    """Every secret value in ``settings``, whatever its length (see the module docstring for the rule)."""
    if settings is None:
        return set()
    found: set[str] = set()
    for channel in settings.channels.values():
        found.update(_model_secrets(channel.options))
    found.update(_model_secrets(settings.server))
    try:
        password = urlsplit(settings.store.url).password
    except ValueError:
        password = None
    if password:
        found.add(password)
    return {s for s in found if s and s.strip()}


# --- redaction -------------------------------------------------------------------------------------------------


def _mask_auth(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return f"{match.group(1)}{scheme + ' ' if scheme else ''}{MASK}"


#: scheme://user:password@host
_URL_PASSWORD = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")

#: Applied to every text whatever the configuration: credentials that announce themselves.
_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # Authorization: Bearer abc | "Authorization": "Basic abc" | authorization=abc
    (
        re.compile(
            r"""\b((?:proxy-)?authorization["']?\s*[:=]\s*["']?)(?:(bearer|basic|token|digest|apikey)\s+)?[^\s"',;}\]]+""",
            re.IGNORECASE,
        ),
        _mask_auth,
    ),
    (re.compile(r"\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE), rf"\1 {MASK}"),
    # OAuth 1.0a parameters wherever they show: an Authorization header (oauth_signature="..."), a query, a
    # signature base string (percent-encoded once or twice, as OAuth client libraries log them at debug).
    (
        re.compile(r"""(oauth_(?:signature|token|consumer_key|verifier)["']?\s*(?:=|%3D|%253D)\s*["']?)[^"'&\s,]+"""),
        rf"\1{MASK}",
    ),
    (re.compile(r"""\b(x-syndicate-signature["']?\s*[:=]\s*["']?)[^\s"'}\]]+""", re.IGNORECASE), rf"\1{MASK}"),
    (re.compile(r"\b(v1=)[0-9a-fA-F]{16,}"), rf"\1{MASK}"),
    (_URL_PASSWORD, rf"\1{MASK}@"),
    # ?access_token=... &secret=... (some platforms put tokens in the query string; errors echo the URL)
    (
        re.compile(
            r"([?&;](?:access_token|refresh_token|token|secret|app_secret|client_secret|api_key|apikey|key|password"
            r"|sig|signature)=)[^&\s\"'#]+",
            re.IGNORECASE,
        ),
        rf"\1{MASK}",
    ),
)


def _variants(secret: str) -> set[str]:
    """The secret as it may appear in a log line: raw, inside a repr, inside JSON, and URL-encoded. The last is
    how a platform quotes back a form body or a query string it refuses (e.g. ``access_token=2.00ab%2Fcd&...``
    with no ``?`` or ``&`` before it for the parameter pattern to catch), so a secret with ``+``, ``/`` or ``=``
    in it would otherwise come out of an error message whole. Encoded twice is how OAuth 1.0a's signature base
    string carries the consumer key and token (oauthlib logs it at debug)."""
    encoded = {quote(secret, safe=""), quote(secret, safe="/"), quote_plus(secret), quote_plus(secret, safe="/")}
    return {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        *encoded,
        *(quote(once, safe="") for once in encoded),
    }


class Redactor:
    """Replaces known secret values (at least ``MIN_SECRET_LENGTH`` long) and credential patterns with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        usable = {v for s in secrets if s and len(s) >= MIN_SECRET_LENGTH for v in _variants(s)}
        #: Longest first, so a secret containing another is masked whole.
        self.secrets: tuple[str, ...] = tuple(sorted(usable, key=lambda s: (-len(s), s)))
        self._pattern = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    def redact(self, text: str) -> str:
        if not text:
            return text
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def __call__(self, text: str) -> str:
        return self.redact(text)


_lock = threading.Lock()
_configured: set[str] = set()
_runtime: set[str] = set()
_active = Redactor()


def _rebuild() -> None:
    global _active
    _active = Redactor(_configured | _runtime)


def set_secrets(settings: Settings | None) -> None:
    """Make the secrets of ``settings`` the configured ones (``configure_logging`` calls this)."""
    with _lock:
        _configured.clear()
        _configured.update(collect_secrets(settings))
        _rebuild()


def register_secret(*values: str | None) -> None:
    """Add secrets learnt at run time (an access token fetched by an adapter); they stay masked for the process."""
    new = {v for v in values if v and v not in _runtime}
    if new:
        with _lock:
            _runtime.update(new)
            _rebuild()


def redact(text: str) -> str:
    """``text`` with every known secret and credential pattern replaced by ``***``.

    Call it before putting foreign text (a platform's error message, an exception) into an API answer.
    """
    return _active.redact(text)


def redacted_config(settings: Settings) -> dict[str, Any]:
    """The settings as a JSON-able dict fit for a log line or a `config show`: every secret field is ``***``,
    however short, and the store URL's password is masked."""

    def mask(value: Any) -> Any:
        if isinstance(value, Mapping):  # a table inside a table: header-like (a channel's static headers)
            out = {}
            for key, item in value.items():
                secret = _is_secret_name(str(key)) or _is_secret_header(str(key))
                out[key] = MASK if secret and item not in (None, "", [], {}) else mask(item)
            return out
        if isinstance(value, list):
            return [mask(v) for v in value]
        if isinstance(value, str):
            return _URL_PASSWORD.sub(rf"\1{MASK}@", value)
        return value

    def dump(model: BaseModel) -> dict[str, Any]:
        raw = model.model_dump(mode="json")
        out = {}
        for key, item in raw.items():
            secret = _is_secret_name(key)
            out[key] = MASK if secret and item not in (None, "", [], {}) else mask(item)
        return out

    return {
        "source": settings.source,
        "store": dump(settings.store),
        "engine": dump(settings.engine),
        "server": dump(settings.server),
        "media": {
            "allow_private": settings.media.allow_private,
            "allow_hosts": sorted(f"{host}:{port}" for host, port in settings.media.allow_hosts),
            "max_bytes": settings.media.max_bytes,
            "allowed_types": list(settings.media.allowed_types),
            "cache_dir": None if settings.media.cache_dir is None else str(settings.media.cache_dir),
            "timeout": settings.media.timeout,
        },
        "channels": {
            name: {
                "kind": ch.kind,
                "enabled": ch.enabled,
                "concurrency": ch.concurrency,
                "timeout": ch.timeout,
                "retry": list(ch.retry),
                **dump(ch.options),
            }
            for name, ch in settings.channels.items()
        },
    }


# --- the filter and the formatters -----------------------------------------------------------------------------

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_REDACTED_MARK = "_syndicate_redacted"


def _format_exception(exc_info: Any) -> str:
    return "".join(traceback.format_exception(*exc_info)).rstrip("\n")


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message (args merged in), extra fields, exception and stack text.

    Attach it to a handler. It rewrites the record in place (``msg`` becomes the final message, ``args`` None,
    ``exc_info`` is rendered into ``exc_text``) so no later formatter can render an unredacted copy. Without a
    ``redactor`` it uses the process-wide one, which follows ``configure_logging``/``register_secret``.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _REDACTED_MARK, False):
            return True
        r = self._redactor or _active
        try:
            message = record.getMessage()
        except Exception:  # mismatched %-args: still log it, still redacted
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = r.redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = r.redact(record.exc_text or _format_exception(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = r.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = r.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key in _STANDARD_ATTRS or key.startswith("_") or value is None or isinstance(value, (bool, int, float)):
                continue
            text = value if isinstance(value, str) else str(value)
            masked = r.redact(text)
            if masked != text:
                setattr(record, key, masked)
        setattr(record, _REDACTED_MARK, True)
        return True


def _rfc3339(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)  # a StrEnum becomes its value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, UTC, ms), level (lower case), logger, message, the context fields
    present on the record (``CONTEXT_FIELDS``), ``exc`` for an exception and ``stack`` for stack_info."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = _jsonable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        line = json.dumps(out, ensure_ascii=False, default=str)
        # Characters str.splitlines() treats as line breaks that JSON leaves unescaped: keep one record per line.
        return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message> key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_rfc3339(record.created)} {record.levelname} {record.name}: {record.getMessage()}"]
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                parts.append(f"{name}={_jsonable(value)}")
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


_HANDLER_MARK = "_syndicate_handler"


def reset_logging() -> None:
    """Remove the handler ``configure_logging`` installed (other handlers, e.g. pytest's, are left alone)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
            handler.flush()


def configure_logging(
    settings: Settings | None,
    *,
    fmt: Literal["json", "text"] = "json",
    level: int = logging.INFO,
    stream: TextIO | None = None,
) -> None:
    """Send every log record to ``stream`` (default: ``sys.stderr`` at call time), formatted as JSON lines or
    text, with the secrets of ``settings`` masked. Calling it again replaces the handler it installed before."""
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r} (expected 'json' or 'text')")
    set_secrets(settings)
    reset_logging()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    # First in line: the filter rewrites the record, so root handlers installed earlier (a test's capture, an
    # embedding application's) get the masked record too instead of formatting it before we mask it.
    root.handlers.remove(handler)
    root.handlers.insert(0, handler)
    root.setLevel(level)
    # oauthlib's debug lines are the signing itself (parameters, base string, "Signature: <value>"): credential
    # material at any verbosity, so it never logs below INFO.
    logging.getLogger("oauthlib").setLevel(max(level, logging.INFO))
