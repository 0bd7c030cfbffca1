"""IPTC ninjs 2.2 in and out of the canonical story, and validation against the 2.2 schema.

Kept apart from ``syndicate.story`` so the canonical model does not carry a second format's rules: the intake reads
either format through ``read_document``; ``from_ninjs`` names ninjs fields in its errors (``headlines[0].value``);
``to_ninjs`` exports a document that validates against the schema; ``validate_ninjs`` checks one strictly.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from syndicate.story import (
    RFC3339,
    VERSION_MAX,
    FieldError,
    Image,
    Story,
    StoryValidationError,
    error_path,
    is_http_url,
    is_uri,
    parse_timestamp,
    refuse_lone_surrogates,
    rfc3339,
)

#: ninjs ``uri`` of a story whose id is not itself an absolute URI: this prefix plus the percent-encoded id.
NINJS_URI_PREFIX = "urn:syndicate:story:"
#: Named in the ``standard`` object of every export, so a consumer knows which schema to check it against.
NINJS_SCHEMA_URI = "http://www.iptc.org/std/ninjs/ninjs-schema_2.2.json"


def read_document(obj: Any) -> Story:
    """Read either format at one intake endpoint: canonical if it has ``id``, ninjs if it has ``uri``.

    A document with ``headline`` but neither ``id`` nor ``uri`` is read as canonical (so the error names
    the missing ``id``); ``id`` wins over ``uri``.
    """
    if not isinstance(obj, Mapping):
        raise StoryValidationError.at("$", "must be a JSON object")
    if "id" in obj:
        return Story.from_dict(obj)
    if "uri" in obj:
        return from_ninjs(obj)
    if "headline" in obj:
        return Story.from_dict(obj)
    raise StoryValidationError.at(
        "$",
        "not a story: expected a canonical story (keys 'id' and 'headline') or a ninjs 2.2 document (key 'uri')",
    )


def from_ninjs(obj: Any) -> Story:
    """Import a ninjs 2.2 document; error paths name ninjs fields (``headlines[0].value``, ``version``).

    ninjs requires only ``uri``, so missing pieces are derived where that is safe: the headline is the
    ``main`` (or role-less, else first non-sub) headline, else ``title``, ``slugline``, else the first
    line of the body or description text; language defaults to zh-CN. Unmapped ninjs fields (people,
    places, copyright...) are ignored; call ``validate_ninjs`` first when input must be strict ninjs.
    """
    refuse_lone_surrogates(obj, "")
    return _NinjsImport().run(obj)


def to_ninjs(story: Story) -> dict[str, Any]:
    """Export as a ninjs 2.2 document that validates against the 2.2 schema.

    ``targets`` and ``overrides`` are not exported: they are syndicate routing with no ninjs home.
    Everything else round-trips through ``from_ninjs`` unchanged.
    """
    doc: dict[str, Any] = {
        "uri": _story_uri(story.id),
        "type": "composite" if story.images else "text",
        "representationtype": "full",
        "version": str(story.version),
        "pubstatus": story.pubstatus,
        "standard": {"name": "ninjs", "version": "2.2", "schema": NINJS_SCHEMA_URI},
        "language": story.language,
    }
    for key, value in (
        ("firstcreated", story.published_at),
        ("versioncreated", story.updated_at),
        ("embargoed", story.embargo_until),
    ):
        if value is not None:
            doc[key] = rfc3339(value)
    if story.urgency is not None:
        doc["urgency"] = story.urgency
    if story.by is not None:
        doc["by"] = story.by
    headlines = [{"role": "main", "value": story.headline}]
    if story.subheadline is not None:
        headlines.append({"role": "sub", "value": story.subheadline})
    doc["headlines"] = headlines
    if story.summary is not None:
        doc["descriptions"] = [{"role": "summary", "contenttype": "text/plain", "value": story.summary}]
    if story.body_html:
        doc["bodies"] = [{"role": "main", "contenttype": "text/html", "value": story.body_html}]
    if story.url is not None:
        doc["altids"] = [{"role": "url", "value": story.url}]
    subjects = [{"name": tag, "rel": "tag"} for tag in story.tags]
    if story.section is not None:
        subjects.append({"name": story.section, "rel": "section"})
    if subjects:
        doc["subjects"] = subjects
    if story.images:
        doc["associations"] = [
            _association(image, "cover" if image.role == "cover" else f"image-{number}")
            for number, image in enumerate(story.images, start=1)
        ]
    return doc


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
    if is_uri(story_id) and not story_id.startswith(NINJS_URI_PREFIX):
        return story_id
    return NINJS_URI_PREFIX + quote(story_id, safe="-._~!$&'()*+,;=:@/")


def _association(image: Image, name: str) -> dict[str, Any]:
    rendition: dict[str, Any] = {"name": "original", "href": image.href}
    if image.width is not None:
        rendition["width"] = image.width
    if image.height is not None:
        rendition["height"] = image.height
    if image.size_bytes is not None:
        rendition["sizeinbytes"] = image.size_bytes
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
        usable = [(path, item) for path, item in self.objects(doc, "renditions", base) if is_http_url(item.get("href"))]
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
            # Digits counted before int(): Python refuses to convert over 4,300 of them (a ValueError, not an answer).
            if not isinstance(version, str) or re.fullmatch(r"[0-9]+", version) is None:
                self.fail("version", 'must be a positive integer string such as "3"')
            elif len(version.lstrip("0")) > len(str(VERSION_MAX)) or not 1 <= int(version) <= VERSION_MAX:
                self.fail("version", f"must be an integer string from 1 to {VERSION_MAX}")
            else:
                self.put("version", int(version), "version")
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
                if not is_http_url(item.get("uri")):
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
        for key, ninjs_key in (("width", "width"), ("height", "height"), ("size_bytes", "sizeinbytes")):
            if item.get(ninjs_key) is not None:
                image[key] = _whole(item[ninjs_key])
                self.source[f"{at}.{key}"] = f"{rendition_path}.{ninjs_key}"
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
    return not isinstance(instance, str) or is_uri(instance)


@_FORMATS.checks("date-time")
def _check_date_time_format(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if RFC3339.fullmatch(instance) is None:
        return False
    try:
        parse_timestamp(instance)
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
        (FieldError(error_path(err.absolute_path), _shorten(err.message)) for err in validator.iter_errors(obj)),
        key=lambda error: (error.path, error.problem),
    )
    if found:
        raise StoryValidationError(found)


def _shorten(message: str, limit: int = 300) -> str:
    # jsonschema quotes the offending value; a whole article body is not a useful error message.
    return message if len(message) <= limit else f"{message[: limit - 1]}…"
