"""The canonical story: one validated, immutable model that every channel renders from.

Why one model: the intake, the store and every adapter see the same shape, validated once at the edge, so
no adapter has to second-guess its input. A story arrives as canonical JSON (``Story.from_dict`` /
``from_json``) or as IPTC ninjs 2.2 (``Story.from_ninjs``); ``Story.from_document`` picks the right reader.
Every constructor raises only ``StoryValidationError``, whose ``errors`` name each offending field in the
sender's own vocabulary (``images[1].href`` for canonical input, ``headlines[0].value`` for ninjs), all
problems at once.

``Story.content_hash`` fingerprints the content of a version, so a re-sent identical version is recognised
whatever its key order, stray whitespace or timezone spelling.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from jsonschema import Draft202012Validator, FormatChecker
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = [
    "NINJS_SCHEMA_URI",
    "NINJS_URI_PREFIX",
    "ChannelOverride",
    "FieldError",
    "Image",
    "Story",
    "StoryValidationError",
    "validate_ninjs",
]

#: ninjs ``uri`` of a story whose id is not itself an absolute URI: this prefix plus the percent-encoded id.
NINJS_URI_PREFIX = "urn:syndicate:story:"
#: Named in the ``standard`` object of every export, so a consumer knows which schema to check it against.
NINJS_SCHEMA_URI = "http://www.iptc.org/std/ninjs/ninjs-schema_2.2.json"

_TIMESTAMP_HINT = "must be an RFC 3339 date-time, e.g. 2019-09-18T10:00:00+08:00"
_NAIVE_HINT = "must be timezone-aware (add Z or +08:00)"
_URL_HINT = "must be an http(s) URL"


# --------------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class FieldError:
    """One problem with one field; ``path`` is dotted/indexed (``images[0].href``), ``$`` is the document."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class StoryValidationError(ValueError):
    """Bad story input, carrying every problem found (not just the first) so a sender fixes them in one go."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        unique = list(dict.fromkeys(errors)) or [FieldError("$", "invalid story")]
        self.errors: list[FieldError] = unique
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)

    def __reduce__(self) -> tuple[type[StoryValidationError], tuple[list[FieldError]]]:
        # The default would call __init__ with the message string; keep the errors across processes.
        return (type(self), (self.errors,))

    @classmethod
    def at(cls, path: str, problem: str) -> StoryValidationError:
        """A single-problem error, for checks made outside pydantic."""
        return cls([FieldError(path, problem)])

    @classmethod
    def from_pydantic(cls, exc: ValidationError) -> StoryValidationError:
        """Translate pydantic's loc tuples and messages into ``path: problem`` pairs a sender can act on."""
        return cls(FieldError(_path(error["loc"]), _problem(error)) for error in exc.errors())


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _path(loc: Iterable[int | str]) -> str:
    """``('images', 1, 'href')`` -> ``images[1].href``; odd dict keys are quoted: ``overrides["a.b"]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out or "$"


_PROBLEMS = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def _problem(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    message = error["msg"]
    return message[:1].lower() + message[1:]


# ----------------------------------------------------------------------------------------------- field rules

_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
# RFC 3986 URI: a scheme, then only characters a URI may carry (non-ASCII must be percent-encoded).
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_URI_SAFE = "-._~:/?#[]@!$&'()*+,;=%"
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}(?::\d{2})?)(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def _is_uri(value: str) -> bool:
    return _URI.fullmatch(value) is not None


def _story_id(value: str) -> str:
    if not 1 <= len(value) <= 200:
        raise ValueError("must be 1 to 200 characters")
    for char in value:
        if char.isspace() or unicodedata.category(char) in _INVISIBLE:
            raise ValueError(f"must not contain whitespace or control characters (found U+{ord(char):04X})")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _language(value: str) -> str:
    if _LANGUAGE.fullmatch(value) is None:
        raise ValueError("must be a BCP 47 language tag such as zh-CN")
    return value


def _to_uri_chars(text: str) -> str:
    """Percent-encode what a URI may not carry (non-ASCII as UTF-8, stray ``%``), keeping existing escapes."""
    return quote(re.sub(r"%(?![0-9A-Fa-f]{2})", "%25", text), safe=_URI_SAFE)


def _http_url(value: str) -> str:
    """Accept an http(s) URL and return it in URI form, so it stays valid in ninjs (``format: uri``) exports.

    An IRI (non-ASCII path or host) is converted: path, query and fragment percent-encoded, host IDNA-encoded.
    A URL that already is a valid URI is returned unchanged.
    """
    if any(char.isspace() or unicodedata.category(char) in _INVISIBLE for char in value):
        raise ValueError(_URL_HINT)
    try:
        parts = urlsplit(value)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(_URL_HINT) from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ValueError(_URL_HINT)
    if _is_uri(value):
        return value
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(_URL_HINT) from None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        netloc = f"{_to_uri_chars(userinfo)}@{netloc}"
    query, fragment = _to_uri_chars(parts.query), _to_uri_chars(parts.fragment)
    result = urlunsplit((parts.scheme, netloc, _to_uri_chars(parts.path), query, fragment))
    if not _is_uri(result):
        raise ValueError(_URL_HINT)
    return result


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _http_url(value)
    except ValueError:
        return False
    return True


def _parse_timestamp(value: object) -> datetime:
    """Accept an aware datetime or RFC 3339 text; a naive time would be guessed wrong somewhere downstream."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        match = _TIMESTAMP.fullmatch(value.strip())
        if match is None:
            raise ValueError(_TIMESTAMP_HINT)
        date, clock, fraction, offset = match.groups()
        if offset in ("Z", "z"):
            offset = "+00:00"
        elif offset is not None and ":" not in offset:
            offset = f"{offset[:3]}:{offset[3:]}"
        try:
            parsed = datetime.fromisoformat(f"{date}T{clock}{(fraction or '')[:7]}{offset or ''}")
        except ValueError:
            raise ValueError(f"{_TIMESTAMP_HINT} (not a real date or time)") from None
    else:
        raise ValueError(_TIMESTAMP_HINT)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(_NAIVE_HINT)
    return parsed


def _rfc3339(value: datetime) -> str:
    """RFC 3339 text with the sender's offset kept (``Z`` for UTC); sub-minute offsets fall back to UTC."""
    offset = value.utcoffset()
    if offset is None or offset % timedelta(minutes=1):
        value = value.astimezone(UTC)
    text = value.isoformat()
    return f"{text[:-6]}Z" if text.endswith("+00:00") else text


_StoryId = Annotated[str, AfterValidator(_story_id)]
_NonBlank = Annotated[str, AfterValidator(_non_blank)]
_Language = Annotated[str, AfterValidator(_language)]
_HttpUrl = Annotated[str, AfterValidator(_http_url)]
_Timestamp = Annotated[datetime, BeforeValidator(_parse_timestamp)]


# ---------------------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    """Shared base: immutable, rejects unknown keys, raises StoryValidationError rather than pydantic's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise StoryValidationError.from_pydantic(exc) from None

    # Tell pydantic this __init__ only wraps errors: without the marker it would call it for every nested model
    # and turn the StoryValidationError (a ValueError) into a flattened "value error" at the parent's path.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        """pydantic's validator, raising StoryValidationError so callers handle one error type."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise StoryValidationError.from_pydantic(exc) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Self:
        """pydantic's JSON validator, raising StoryValidationError so callers handle one error type."""
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise StoryValidationError.from_pydantic(exc) from None


class Image(_Model):
    """A picture attached to a story. ``href`` is kept in URI form so it survives every export unchanged."""

    href: _HttpUrl
    caption: str | None = None
    width: StrictInt | None = Field(default=None, ge=1)
    height: StrictInt | None = Field(default=None, ge=1)
    alt: str | None = None
    role: Literal["cover", "inline"] = "inline"


class ChannelOverride(_Model):
    """Per-channel replacement text, for the desk that wants a different headline on one platform."""

    headline: str | None = None
    summary: str | None = None
    text: str | None = None


class Story(_Model):
    """One version of one story, as the CMS or wire sent it: the single input every channel renders from.

    Immutable; a change is a new version. ``targets`` (``None`` = every enabled channel) and ``overrides``
    (keyed by channel name) are syndicate routing: they have no home in ninjs, so ``to_ninjs`` does not
    export them and ``from_ninjs`` leaves them at their defaults.
    """

    id: _StoryId
    version: StrictInt = Field(default=1, ge=1)
    pubstatus: Literal["usable", "withheld", "canceled"] = "usable"
    headline: str
    subheadline: str | None = None
    summary: str | None = None
    body_html: str = ""
    by: str | None = None
    language: _Language = "zh-CN"
    url: _HttpUrl | None = None
    published_at: _Timestamp | None = None
    updated_at: _Timestamp | None = None
    embargo_until: _Timestamp | None = None
    urgency: StrictInt | None = Field(default=None, ge=1, le=9)
    images: list[Image] = Field(default_factory=list)
    tags: list[_NonBlank] = Field(default_factory=list)
    section: _NonBlank | None = None
    targets: list[_NonBlank] | None = None
    overrides: dict[str, ChannelOverride] = Field(default_factory=dict)

    # ---- validation

    @model_validator(mode="before")
    @classmethod
    def _canceled_may_omit_headline(cls, data: Any) -> Any:
        # A retraction from the CMS often carries only the id and pubstatus.
        if isinstance(data, Mapping) and data.get("pubstatus") == "canceled" and "headline" not in data:
            return {**data, "headline": ""}
        return data

    @field_validator("headline")
    @classmethod
    def _headline_not_blank(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip() and info.data.get("pubstatus") != "canceled":
            raise ValueError("must not be blank (only a canceled story may have an empty headline)")
        return value

    @field_validator("images")
    @classmethod
    def _one_cover(cls, images: list[Image]) -> list[Image]:
        covers = [f"images[{index}]" for index, image in enumerate(images) if image.role == "cover"]
        if len(covers) > 1:
            raise ValueError(f"at most one image may have role cover ({' and '.join(covers)} do)")
        return images

    @field_validator("overrides")
    @classmethod
    def _channel_names(cls, overrides: dict[str, ChannelOverride]) -> dict[str, ChannelOverride]:
        if any(not name.strip() for name in overrides):
            raise ValueError("channel names must not be blank")
        return overrides

    @field_serializer("published_at", "updated_at", "embargo_until", when_used="json")
    def _timestamp_text(self, value: datetime | None) -> str | None:
        return None if value is None else _rfc3339(value)

    # ---- derived

    @property
    def cover(self) -> Image | None:
        """The image to lead with: the one marked cover, else the first, else None."""
        for image in self.images:
            if image.role == "cover":
                return image
        return self.images[0] if self.images else None

    @property
    def is_retraction(self) -> bool:
        """True when channels should take the story down (withheld or canceled), not publish it."""
        return self.pubstatus != "usable"

    @property
    def content_hash(self) -> str:
        """sha256 hex of the normalised content, so a re-sent identical version is recognised as such.

        Covers every field except ``version`` and ``updated_at``. Strings are NFC-normalised and stripped,
        times are in UTC, and absent values (None, or text blank after stripping) are left out, so a field
        added to the model later with a None default does not change the hash of existing stories.
        """
        content = self.model_dump(mode="python", exclude={"version", "updated_at"})
        text = json.dumps(_normalised(content), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # ---- canonical JSON

    @classmethod
    def from_dict(cls, obj: Any) -> Story:
        """Validate a canonical story dict (the shape ``to_dict`` produces)."""
        if not isinstance(obj, Mapping):
            raise StoryValidationError.at("$", "must be a JSON object")
        _refuse_lone_surrogates(obj, "")
        return cls.model_validate(dict(obj))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Story:
        """Parse and validate canonical story JSON; malformed JSON is reported at ``$`` with its position."""
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno} (char {exc.pos})"
            raise StoryValidationError.at("$", f"malformed JSON: {exc.msg} at {where}") from None
        except UnicodeDecodeError as exc:
            raise StoryValidationError.at("$", f"malformed JSON: not UTF-8 text (byte {exc.start})") from None
        except TypeError:
            raise StoryValidationError.at("$", "must be JSON text (str or bytes)") from None
        return cls.from_dict(obj)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (times as RFC 3339 text); ``from_dict`` reads it back unchanged."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """Compact UTF-8 JSON of ``to_dict``, the form the store keeps."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_document(cls, obj: Any) -> Story:
        """Read either format at one intake endpoint: canonical if it has ``id``, ninjs if it has ``uri``.

        A document with ``headline`` but neither ``id`` nor ``uri`` is read as canonical (so the error names
        the missing ``id``); ``id`` wins over ``uri``.
        """
        if not isinstance(obj, Mapping):
            raise StoryValidationError.at("$", "must be a JSON object")
        if "id" in obj:
            return cls.from_dict(obj)
        if "uri" in obj:
            return cls.from_ninjs(obj)
        if "headline" in obj:
            return cls.from_dict(obj)
        raise StoryValidationError.at(
            "$",
            "not a story: expected a canonical story (keys 'id' and 'headline') or a ninjs 2.2 document (key 'uri')",
        )

    # ---- ninjs 2.2

    @classmethod
    def from_ninjs(cls, obj: Any) -> Story:
        """Import a ninjs 2.2 document; error paths name ninjs fields (``headlines[0].value``, ``version``).

        ninjs requires only ``uri``, so missing pieces are derived where that is safe: the headline is the
        ``main`` (or role-less, else first non-sub) headline, else ``title``, ``slugline``, else the first
        line of the body or description text; language defaults to zh-CN. Unmapped ninjs fields (people,
        places, copyright...) are ignored; call ``validate_ninjs`` first when input must be strict ninjs.
        """
        _refuse_lone_surrogates(obj, "")
        return _NinjsImport().run(obj)

    def to_ninjs(self) -> dict[str, Any]:
        """Export as a ninjs 2.2 document that validates against the 2.2 schema.

        ``targets`` and ``overrides`` are not exported: they are syndicate routing with no ninjs home.
        Everything else round-trips through ``from_ninjs`` unchanged.
        """
        doc: dict[str, Any] = {
            "uri": _story_uri(self.id),
            "type": "composite" if self.images else "text",
            "representationtype": "full",
            "version": str(self.version),
            "pubstatus": self.pubstatus,
            "standard": {"name": "ninjs", "version": "2.2", "schema": NINJS_SCHEMA_URI},
            "language": self.language,
        }
        for key, value in (
            ("firstcreated", self.published_at),
            ("versioncreated", self.updated_at),
            ("embargoed", self.embargo_until),
        ):
            if value is not None:
                doc[key] = _rfc3339(value)
        if self.urgency is not None:
            doc["urgency"] = self.urgency
        if self.by is not None:
            doc["by"] = self.by
        headlines = [{"role": "main", "value": self.headline}]
        if self.subheadline is not None:
            headlines.append({"role": "sub", "value": self.subheadline})
        doc["headlines"] = headlines
        if self.summary is not None:
            doc["descriptions"] = [{"role": "summary", "contenttype": "text/plain", "value": self.summary}]
        if self.body_html:
            doc["bodies"] = [{"role": "main", "contenttype": "text/html", "value": self.body_html}]
        if self.url is not None:
            doc["altids"] = [{"role": "url", "value": self.url}]
        subjects = [{"name": tag, "rel": "tag"} for tag in self.tags]
        if self.section is not None:
            subjects.append({"name": self.section, "rel": "section"})
        if subjects:
            doc["subjects"] = subjects
        if self.images:
            doc["associations"] = [
                _association(image, "cover" if image.role == "cover" else f"image-{number}")
                for number, image in enumerate(self.images, start=1)
            ]
        return doc


def _normalised(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip()
    if isinstance(value, datetime):
        return _rfc3339(value.astimezone(UTC))
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            item = _normalised(item)
            if item is not None and item != "":
                out[_normalised(key)] = item
        return out
    if isinstance(value, list | tuple):
        return [_normalised(item) for item in value]
    return value


# ------------------------------------------------------------------------------------------------ ninjs out

_IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
}


def _story_uri(story_id: str) -> str:
    # An id that is already a URI is its own ninjs uri, unless it starts with our prefix (import strips it).
    if _is_uri(story_id) and not story_id.startswith(NINJS_URI_PREFIX):
        return story_id
    return NINJS_URI_PREFIX + quote(story_id, safe="-._~!$&'()*+,;=:@/")


def _association(image: Image, name: str) -> dict[str, Any]:
    rendition: dict[str, Any] = {"name": "original", "href": image.href}
    if image.width is not None:
        rendition["width"] = image.width
    if image.height is not None:
        rendition["height"] = image.height
    path = urlsplit(image.href).path.lower()
    suffix = path[path.rfind(".") :] if "." in path.rsplit("/", 1)[-1] else ""
    if suffix in _IMAGE_TYPES:
        rendition["contenttype"] = _IMAGE_TYPES[suffix]
    item: dict[str, Any] = {"name": name, "uri": image.href, "type": "picture"}
    if image.caption is not None:
        item["headlines"] = [{"value": image.caption}]
    if image.alt is not None:
        item["descriptions"] = [{"role": "alt", "value": image.alt}]
    item["renditions"] = [rendition]
    return item


# ------------------------------------------------------------------------------------------------- ninjs in

_SUB_ROLES = ("sub", "subheadline")
_PICTURE_TYPES = ("picture", "graphic")
_NINJS_1X = {
    "headline": "headlines[]",
    "body_html": "bodies[]",
    "body_text": "bodies[]",
    "body_xhtml": "bodies[]",
    "byline": "by",
    "description_text": "descriptions[]",
    "description_html": "descriptions[]",
}
_TIMESTAMP_FIELDS = (
    ("firstcreated", "published_at"),
    ("versioncreated", "updated_at"),
    ("embargoed", "embargo_until"),
)
_DERIVED_HEADLINE_LENGTH = 100


@dataclass(frozen=True)
class _Text:
    """One well-formed headline/description/body item and where it sits in the ninjs document."""

    path: str
    role: str | None
    contenttype: str | None
    value: str

    @property
    def is_html(self) -> bool:
        return "html" in (self.contenttype or "").lower() or self.role == "richtext"

    @property
    def is_plain(self) -> bool:
        kind = (self.contenttype or "text/plain").lower()
        return "plain" in kind or kind == "text"


def _parent(path: str) -> str:
    return re.sub(r"(?:\.[^.\[\]\"]+|\[[^\]]*\])$", "", path)


def _whole(value: Any) -> Any:
    """ninjs sizes are JSON numbers: 429.0 is the integer 429; anything else is left for validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _plain_to_html(text: str) -> str:
    """Plain text to ``<p>`` paragraphs: blank lines separate paragraphs if present, else each line is one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if re.search(r"\n[ \t]*\n", text):
        blocks = re.split(r"\n\s*\n", text)
        paragraphs = [
            "<br>".join(html.escape(line.strip(), quote=False) for line in block.split("\n") if line.strip())
            for block in blocks
        ]
    else:
        paragraphs = [html.escape(line.strip(), quote=False) for line in text.split("\n")]
    return "\n".join(f"<p>{paragraph}</p>" for paragraph in paragraphs if paragraph)


def _first_line(text: _Text) -> str | None:
    value = text.value
    if text.is_html:
        value = html.unescape(re.sub(r"<[^>]*>", "\n", value))
    for line in value.splitlines():
        line = " ".join(line.split())
        if line:
            if len(line) > _DERIVED_HEADLINE_LENGTH:
                line = line[: _DERIVED_HEADLINE_LENGTH - 1].rstrip() + "…"
            return line
    return None


class _NinjsImport:
    """Reads a ninjs document into canonical field values, remembering the ninjs path each one came from."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.data: dict[str, Any] = {}
        self.source: dict[str, str] = {}  # canonical path -> ninjs path, to name ninjs fields in errors

    def fail(self, path: str, problem: str) -> None:
        self.errors.append(FieldError(path, problem))

    def put(self, field: str, value: Any, source: str) -> None:
        self.data[field] = value
        self.source[field] = source

    def locate(self, path: str) -> str:
        probe = path
        while True:
            if probe in self.source:
                return self.source[probe] + path[len(probe) :]
            parent = _parent(probe)
            if parent == probe:
                return path
            probe = parent

    # ---- shape readers that report instead of raising

    def objects(self, doc: Mapping[str, Any], key: str, base: str) -> list[tuple[str, Mapping[str, Any]]]:
        path = f"{base}{key}"
        if key not in doc:
            return []
        value = doc[key]
        if not isinstance(value, list):
            self.fail(path, "must be an array")
            return []
        items = []
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                items.append((f"{path}[{index}]", item))
            else:
                self.fail(f"{path}[{index}]", "must be an object")
        return items

    def string(self, item: Mapping[str, Any], key: str, path: str) -> str | None:
        value = item.get(key)
        if value is None or isinstance(value, str):
            return value
        self.fail(f"{path}.{key}", "must be a string")
        return None

    def texts(self, doc: Mapping[str, Any], key: str, base: str) -> list[_Text]:
        out = []
        for path, item in self.objects(doc, key, base):
            value = item.get("value")
            if not isinstance(value, str):
                self.fail(f"{path}.value", "field required" if value is None else "must be a string")
                continue
            role, contenttype = self.string(item, "role", path), self.string(item, "contenttype", path)
            out.append(_Text(path, role, contenttype, value))
        return out

    def best_rendition(self, doc: Mapping[str, Any], base: str) -> tuple[str, Mapping[str, Any]] | None:
        """The rendition with a usable http(s) href and the largest width (the first one on a tie)."""
        usable = [
            (path, item) for path, item in self.objects(doc, "renditions", base) if _is_http_url(item.get("href"))
        ]
        if not usable:
            return None

        def width(entry: tuple[str, Mapping[str, Any]]) -> float:
            value = entry[1].get("width")
            return value if isinstance(value, int | float) and not isinstance(value, bool) else 0

        return max(usable, key=width)

    # ---- the mapping

    def run(self, obj: Any) -> Story:
        if not isinstance(obj, Mapping):
            raise StoryValidationError.at("$", "must be a JSON object")
        for key, replacement in _NINJS_1X.items():
            if key in obj:
                self.fail(key, f"is a ninjs 1.x field; ninjs 2.2 uses {replacement}")
        if isinstance(obj.get("associations"), Mapping):
            self.fail("associations", "must be an array (an object keyed by name is ninjs 1.x)")

        self.read_identity(obj)
        self.read_texts(obj)
        for ninjs_key, field in (("by", "by"), ("language", "language"), ("urgency", "urgency")):
            if ninjs_key in obj:
                self.put(field, _whole(obj[ninjs_key]), ninjs_key)
        for ninjs_key, field in _TIMESTAMP_FIELDS:
            if ninjs_key in obj:
                self.put(field, obj[ninjs_key], ninjs_key)
        for path, item in self.objects(obj, "altids", ""):
            if item.get("role") == "url" and "url" not in self.data:
                self.put("url", item.get("value"), f"{path}.value")
        self.read_subjects(obj)
        if not isinstance(obj.get("associations"), Mapping):
            self.read_images(obj)

        story: Story | None = None
        try:
            story = Story.model_validate(self.data)
        except StoryValidationError as exc:
            self.errors.extend(FieldError(self.locate(error.path), error.problem) for error in exc.errors)
        if self.errors or story is None:
            raise StoryValidationError(self.errors)
        return story

    def read_identity(self, obj: Mapping[str, Any]) -> None:
        uri = obj.get("uri")
        if uri is None:
            self.fail("uri", "field required")
        elif not isinstance(uri, str):
            self.fail("uri", "must be a string")
        else:
            story_id = unquote(uri[len(NINJS_URI_PREFIX) :]) if uri.startswith(NINJS_URI_PREFIX) else uri
            self.put("id", story_id, "uri")
        if "version" in obj:
            version = obj["version"]
            if isinstance(version, str) and re.fullmatch(r"[0-9]+", version) and int(version) >= 1:
                self.put("version", int(version), "version")
            else:
                self.fail("version", 'must be a positive integer string such as "3"')
        if "pubstatus" in obj:
            self.put("pubstatus", obj["pubstatus"], "pubstatus")

    def read_texts(self, obj: Mapping[str, Any]) -> None:
        headlines = self.texts(obj, "headlines", "")
        main = next((text for text in headlines if text.role in (None, "main")), None)
        main = main or next((text for text in headlines if text.role not in _SUB_ROLES), None)
        sub = next((text for text in headlines if text.role in _SUB_ROLES), None)
        if sub is not None:
            self.put("subheadline", sub.value, f"{sub.path}.value")

        descriptions = self.texts(obj, "descriptions", "")
        summary = next((text for text in descriptions if text.role == "summary"), None)
        summary = summary or next((t for t in descriptions if t.role != "alt" and t.is_plain), None)
        if summary is not None:
            self.put("summary", summary.value, f"{summary.path}.value")

        bodies = self.texts(obj, "bodies", "")
        body = next((text for text in bodies if text.is_html), None)
        if body is not None:
            self.put("body_html", body.value, f"{body.path}.value")
        else:
            body = next((text for text in bodies if text.is_plain), None)
            if body is not None:
                self.put("body_html", _plain_to_html(body.value), f"{body.path}.value")

        self.source["headline"] = "headlines"
        if main is not None:
            self.put("headline", main.value, f"{main.path}.value")
            return
        for key in ("title", "slugline"):
            value = obj.get(key)
            if isinstance(value, str) and value.strip():
                self.put("headline", value, key)
                return
        for text in (*bodies, *(d for d in descriptions if d.role != "alt")):
            line = _first_line(text)
            if line:
                self.put("headline", line, f"{text.path}.value")
                return

    def read_subjects(self, obj: Mapping[str, Any]) -> None:
        tags: list[str] = []
        for path, item in self.objects(obj, "subjects", ""):
            name = self.string(item, "name", path)
            if item.get("rel") == "section":
                if name is not None and "section" not in self.data:
                    self.put("section", name, f"{path}.name")
                continue
            literal = self.string(item, "literal", path)
            if name is not None or literal is not None:
                self.source[f"tags[{len(tags)}]"] = f"{path}.{'name' if name is not None else 'literal'}"
                tags.append(name if name is not None else literal or "")
        if tags:
            self.put("tags", tags, "subjects")

    def read_images(self, obj: Mapping[str, Any]) -> None:
        images: list[dict[str, Any]] = []
        if obj.get("type") in _PICTURE_TYPES:
            best = self.best_rendition(obj, "")
            if best is not None:
                self.add_image(images, best, base=None, role="cover")
        has_cover = bool(images)
        for path, item in self.objects(obj, "associations", ""):
            if item.get("type") not in _PICTURE_TYPES:
                continue
            best = self.best_rendition(item, f"{path}.")
            if best is None:
                if not _is_http_url(item.get("uri")):
                    continue  # nothing we could ever fetch
                best = (f"{path}.uri", {"href": item["uri"]})
            is_cover = item.get("name") == "cover" and not has_cover
            has_cover = has_cover or is_cover
            self.add_image(images, best, base=(path, item), role="cover" if is_cover else "inline")
        if images:
            self.put("images", images, "associations")

    def add_image(
        self,
        images: list[dict[str, Any]],
        rendition: tuple[str, Mapping[str, Any]],
        base: tuple[str, Mapping[str, Any]] | None,
        role: str,
    ) -> None:
        at = f"images[{len(images)}]"
        rendition_path, item = rendition
        href_path = rendition_path if rendition_path.endswith(".uri") else f"{rendition_path}.href"
        image: dict[str, Any] = {"href": item["href"], "role": role}
        self.source[at] = base[0] if base else rendition_path
        self.source[f"{at}.href"] = href_path
        for key in ("width", "height"):
            if item.get(key) is not None:
                image[key] = _whole(item[key])
                self.source[f"{at}.{key}"] = f"{rendition_path}.{key}"
        if base is not None:
            path, association = base
            self.source[f"{at}.role"] = f"{path}.name"
            headlines = self.texts(association, "headlines", f"{path}.")
            if headlines:
                image["caption"] = headlines[0].value
                self.source[f"{at}.caption"] = f"{headlines[0].path}.value"
            for text in self.texts(association, "descriptions", f"{path}."):
                if text.role == "alt":
                    image["alt"] = text.value
                    self.source[f"{at}.alt"] = f"{text.path}.value"
                    break
        images.append(image)


# ------------------------------------------------------------------------------------------ schema checking

_GEOJSON_SCHEMA = "https://geojson.org/schema/GeoJSON.json"
# The 2.2 schema $refs GeoJSON (places[].geojson) on the web; resolve it offline to an accept-anything schema
# instead of fetching at validation time. GeoJSON content is therefore not checked.
_OFFLINE_REGISTRY: Registry[Any] = Registry().with_resource(_GEOJSON_SCHEMA, DRAFT202012.create_resource({}))
_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("uri")
def _check_uri_format(instance: object) -> bool:
    return not isinstance(instance, str) or _is_uri(instance)


@_FORMATS.checks("date-time")
def _check_date_time_format(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if _RFC3339.fullmatch(instance) is None:
        return False
    try:
        _parse_timestamp(instance)
    except ValueError:
        return False
    return True


def validate_ninjs(obj: Any, schema: Mapping[str, Any], *, check_formats: bool = True) -> None:
    """Raise StoryValidationError listing every place ``obj`` breaks ``schema`` (the ninjs 2.2 JSON Schema).

    The schema is passed in, not shipped: the project carries no copies of standards it does not own.
    ``check_formats`` (default on) asserts ``uri`` and ``date-time``, which draft 2020-12 otherwise treats as
    annotations, because consumers do rely on them; official example 002 (a relative uri) passes only with it
    off. A broken ``schema`` is a programming error and raises jsonschema's own exceptions.
    """
    validator = Draft202012Validator(
        schema, registry=_OFFLINE_REGISTRY, format_checker=_FORMATS if check_formats else None
    )
    found = sorted(
        (FieldError(_path(err.absolute_path), _shorten(err.message)) for err in validator.iter_errors(obj)),
        key=lambda error: (error.path, error.problem),
    )
    if found:
        raise StoryValidationError(found)


def _shorten(message: str, limit: int = 300) -> str:
    # jsonschema quotes the offending value; a whole article body is not a useful error message.
    return message if len(message) <= limit else f"{message[: limit - 1]}…"


def _refuse_lone_surrogates(value: Any, path: str) -> None:
    """JSON may escape half of a surrogate pair (\\ud800): such text cannot be stored or sent as UTF-8 anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise StoryValidationError.at(
                path or "$", f"contains an unpaired surrogate (\\u{ord(value[exc.start]):04x}): not valid Unicode text"
            ) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_lone_surrogates(key, path or "$")
            _refuse_lone_surrogates(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_lone_surrogates(item, f"{path}[{index}]")
