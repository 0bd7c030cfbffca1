"""The canonical story: one validated, immutable model that every channel renders from.

Why one model: the intake, the store and every adapter see the same shape, validated once at the edge, so
no adapter has to second-guess its input. A story arrives as canonical JSON (``Story.from_dict`` /
``from_json``) or as IPTC ninjs 2.2 (``syndicate.ninjs.from_ninjs``); ``syndicate.ninjs.read_document`` picks the
right reader.
Every constructor raises only ``StoryValidationError``, whose ``errors`` name each offending field in the
sender's own vocabulary (``images[1].href`` for canonical input, ``headlines[0].value`` for ninjs), all
problems at once.

``Story.content_hash`` fingerprints the content of a version, so a re-sent identical version is recognised
whatever its key order, stray whitespace or timezone spelling.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote, urlsplit, urlunsplit

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

from syndicate.sanitize import plain_text

__all__ = [
    "ChannelOverride",
    "FieldError",
    "Image",
    "Story",
    "StoryValidationError",
]

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
        found: list[FieldError] = []
        for error in exc.errors():
            inner = error.get("ctx", {}).get("error")
            if error["type"] == "value_error" and isinstance(inner, StoryValidationError):
                # A model-level check that names its own fields (the text walk): keep its paths.
                found.extend(inner.errors)
            else:
                found.append(FieldError(error_path(error["loc"]), _problem(error)))
        return cls(found)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def error_path(loc: Iterable[int | str]) -> str:
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
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
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
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


#: What XML 1.0's Char production excludes: C0 controls but tab, LF and CR; surrogates; U+FFFE and U+FFFF. Feeds,
#: sitemaps and every XML-speaking platform refuse them, so one such character would make a story undeliverable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_problem(text: str) -> str | None:
    """Why ``text`` cannot travel in XML 1.0 (the first offending character, position counted from 0), or None."""
    found = _NOT_XML.search(text)
    if found is None:
        return None
    return f"contains U+{ord(found.group()):04X} at position {found.start()}, a character XML 1.0 cannot carry"


def text_errors(value: Any, loc: tuple[int | str, ...] = ()) -> Iterator[FieldError]:
    """Every text of ``value`` (a model, walked through its declared fields, so a field added later is covered;
    lists; dicts, keys too) that XML 1.0 cannot carry."""
    if isinstance(value, str):
        problem = xml_problem(value)
        if problem is not None:
            yield FieldError(error_path(loc), problem)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from text_errors(getattr(value, name), (*loc, name))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and (problem := xml_problem(key)) is not None:
                yield FieldError(error_path(loc), f"key {key!r} {problem}")
            yield from text_errors(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from text_errors(item, (*loc, index))


def is_uri(value: str) -> bool:
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
    if is_uri(value):
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
    if not is_uri(result):
        raise ValueError(_URL_HINT)
    return result


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _http_url(value)
    except ValueError:
        return False
    return True


def parse_timestamp(value: object) -> datetime:
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


def rfc3339(value: datetime) -> str:
    """RFC 3339 text with the sender's offset kept (``Z`` for UTC); sub-minute offsets fall back to UTC."""
    offset = value.utcoffset()
    if offset is None or offset % timedelta(minutes=1):
        value = value.astimezone(UTC)
    text = value.isoformat()
    return f"{text[:-6]}Z" if text.endswith("+00:00") else text


#: Bounds of every number and date a story carries, checked at intake so no store column or renderer overflows.
#: ``version`` fits PostgreSQL's INTEGER (the smaller of the two stores' columns).
VERSION_MAX = 2**31 - 1
#: Image width and height in pixels.
PIXELS_MAX = 100_000
#: An image's size in bytes (ninjs ``sizeinbytes``): 1 TiB, far above any picture, within every integer column.
IMAGE_BYTES_MAX = 2**40
#: Dates: any instant from 1900 to 2999, in UTC and in the sender's own offset (renderers convert both ways).
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)
#: Sizes, in characters (list bounds in items), so no one story can hold intake or a renderer for long.
HEADLINE_MAX = 1_000
SUMMARY_MAX = 5_000
BODY_MAX = 1_000_000
NAME_MAX = 200  # section, tag, channel name
BYLINE_MAX = 500
CAPTION_MAX = 2_000
URL_MAX = 2_048
LANGUAGE_MAX = 64
TAGS_MAX = 50
TAG_MAX = 100
IMAGES_MAX = 50
CHANNELS_MAX = 100  # targets, and overrides keys
#: A JSON integer literal longer than this is clamped (see ``parse_json_int``).
_INT_DIGITS_MAX = 30


def parse_json_int(digits: str) -> int:
    """``json.loads(parse_int=...)``: an integer literal of any length, without Python's 4,300-digit limit
    (``int()`` of a longer string raises ValueError). One too long for any field becomes a huge number of the same
    sign, so the field's own bound refuses it, by name, instead of the parser failing as a whole."""
    if len(digits.lstrip("-")) <= _INT_DIGITS_MAX:
        return int(digits)
    huge: int = 10**_INT_DIGITS_MAX
    return -huge if digits.startswith("-") else huge


def _between(low: int, high: int) -> Any:
    """An integer bound whose refusal names the whole range (pydantic's ge/le name only the side crossed), shown
    in the JSON schema too."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return [AfterValidator(check), Field(json_schema_extra={"minimum": low, "maximum": high})]


def _in_range(value: datetime) -> datetime:
    # Checked in the sender's offset first: 0001-01-01T00:30:00+01:00 cannot even be converted to UTC.
    local = value.replace(tzinfo=None)
    if not EARLIEST.replace(tzinfo=None) <= local <= LATEST.replace(tzinfo=None) or not (EARLIEST <= value <= LATEST):
        raise ValueError(f"must lie between {rfc3339(EARLIEST)} and {rfc3339(LATEST)}")
    return value


_StoryId = Annotated[str, AfterValidator(_story_id)]
_Name = Annotated[str, Field(max_length=NAME_MAX), AfterValidator(_non_blank)]
_Tag = Annotated[str, Field(max_length=TAG_MAX), AfterValidator(_non_blank)]
_Language = Annotated[str, Field(max_length=LANGUAGE_MAX), AfterValidator(_language)]
_HttpUrl = Annotated[str, Field(max_length=URL_MAX), AfterValidator(_http_url)]
_Headline = Annotated[str, Field(max_length=HEADLINE_MAX)]
_Summary = Annotated[str, Field(max_length=SUMMARY_MAX)]
_Caption = Annotated[str, Field(max_length=CAPTION_MAX)]
_Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_timestamp),
    AfterValidator(_in_range),
    Field(json_schema_extra={"description": f"RFC 3339, between {rfc3339(EARLIEST)} and {rfc3339(LATEST)}"}),
]
_Pixels = Annotated[StrictInt, *_between(1, PIXELS_MAX)]
_ByteSize = Annotated[StrictInt, *_between(1, IMAGE_BYTES_MAX)]
_Version = Annotated[StrictInt, *_between(1, VERSION_MAX)]
_Urgency = Annotated[StrictInt, *_between(1, 9)]


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
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]  # a marker pydantic reads off the function

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
    caption: _Caption | None = None
    width: _Pixels | None = None
    height: _Pixels | None = None
    #: The file's size in bytes when the sender states it (ninjs rendition ``sizeinbytes``); feeds need it.
    size_bytes: _ByteSize | None = None
    alt: _Caption | None = None
    role: Literal["cover", "inline"] = "inline"


def _has_text(value: str) -> str:
    # Feeds and the app show headlines as plain text: one that is only markup would be empty on every channel.
    if value.strip() and not plain_text(value):
        raise ValueError("has no text once markup is removed: give it words, not only tags")
    return value


class ChannelOverride(_Model):
    """Per-channel replacement text, for the desk that wants a different headline on one platform."""

    headline: Annotated[_Headline, AfterValidator(_has_text)] | None = None
    summary: _Summary | None = None
    text: _Summary | None = None


class Story(_Model):
    """One version of one story, as the CMS or wire sent it: the single input every channel renders from.

    Immutable; a change is a new version. ``targets`` (``None`` = every enabled channel) and ``overrides``
    (keyed by channel name) are syndicate routing: they have no home in ninjs, so ``to_ninjs`` does not
    export them and ``from_ninjs`` leaves them at their defaults.
    """

    id: _StoryId
    version: _Version = 1
    pubstatus: Literal["usable", "withheld", "canceled"] = "usable"
    headline: _Headline
    subheadline: _Headline | None = None
    summary: _Summary | None = None
    body_html: Annotated[str, Field(max_length=BODY_MAX)] = ""
    by: Annotated[str, Field(max_length=BYLINE_MAX)] | None = None
    language: _Language = "zh-CN"
    url: _HttpUrl | None = None
    published_at: _Timestamp | None = None
    updated_at: _Timestamp | None = None
    embargo_until: _Timestamp | None = None
    urgency: _Urgency | None = None
    images: list[Image] = Field(default_factory=list, max_length=IMAGES_MAX)
    tags: list[_Tag] = Field(default_factory=list, max_length=TAGS_MAX)
    section: _Name | None = None
    targets: list[_Name] | None = Field(default=None, max_length=CHANNELS_MAX)
    overrides: dict[Annotated[str, Field(max_length=NAME_MAX)], ChannelOverride] = Field(
        default_factory=dict, max_length=CHANNELS_MAX
    )

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
        if info.data.get("pubstatus") == "canceled":
            return value
        if not value.strip():
            raise ValueError("must not be blank (only a canceled story may have an empty headline)")
        return _has_text(value)

    @field_validator("images")
    @classmethod
    def _one_cover(cls, images: list[Image]) -> list[Image]:
        covers = [f"images[{index}]" for index, image in enumerate(images) if image.role == "cover"]
        if len(covers) > 1:
            raise ValueError(f"at most one image may have role cover ({' and '.join(covers)} do)")
        return images

    @model_validator(mode="after")
    def _xml_text(self) -> Self:
        # Refused here, at intake, rather than stripped per channel: one rule, and the sender hears of it.
        errors = list(text_errors(self))
        if errors:
            raise StoryValidationError(errors)
        return self

    @field_validator("overrides")
    @classmethod
    def _channel_names(cls, overrides: dict[str, ChannelOverride]) -> dict[str, ChannelOverride]:
        if any(not name.strip() for name in overrides):
            raise ValueError("channel names must not be blank")
        return overrides

    def dated(self, first_accepted: float) -> Self:
        """This story with ``published_at`` set to ``first_accepted`` (unix seconds) when it gives none, for the
        renderers: every channel then shows one date, the first acceptance, whichever version it renders."""
        if self.published_at is not None:
            return self
        return self.model_copy(update={"published_at": datetime.fromtimestamp(first_accepted, UTC)})

    def for_channel(self, channel: str) -> ChannelStory:
        """This story as ``channel`` renders it: the channel's override (headline, summary) applied where it gives
        one, and its own post text. Resolved here once, so no adapter reads ``overrides`` itself."""
        override = self.overrides.get(channel)
        fields = dict(self.__dict__)
        if override is not None:
            # A blank override (only whitespace) falls back to the story's own text.
            fields["headline"] = _given(override.headline) or self.headline
            fields["summary"] = _given(override.summary) or self.summary
        fields["overrides"] = {}
        # Built without validation: every field was validated when this story was, and an override's text is
        # plain text that renderers sanitise like the rest.
        return ChannelStory.model_construct(
            **fields, channel=channel, text=_given(override.text) if override else None, canonical=self
        )

    @field_serializer("published_at", "updated_at", "embargo_until", when_used="json")
    def _timestamp_text(self, value: datetime | None) -> str | None:
        return None if value is None else rfc3339(value)

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
        refuse_lone_surrogates(obj, "")
        return cls.model_validate(dict(obj))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Story:
        """Parse and validate canonical story JSON; malformed JSON is reported at ``$`` with its position."""
        try:
            obj = json.loads(raw, parse_int=parse_json_int)
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


def _normalised(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip()
    if isinstance(value, datetime):
        return rfc3339(value.astimezone(UTC))
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


def refuse_lone_surrogates(value: Any, path: str) -> None:
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
            refuse_lone_surrogates(key, path or "$")
            refuse_lone_surrogates(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            refuse_lone_surrogates(item, f"{path}[{index}]")


def _given(text: str | None) -> str | None:
    return text if text is not None and text.strip() else None


class ChannelStory(Story):
    """A story as one channel sees it (``Story.for_channel``): ``headline`` and ``summary`` are the channel's
    override where it gives one, ``text`` its own post text (None: build it from headline and summary), and
    ``canonical`` the story as the CMS sent it, for channels that pass the whole story on."""

    channel: str
    text: str | None = None
    canonical: Story = Field(exclude=True)
