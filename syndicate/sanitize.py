"""The one HTML sanitiser every channel that publishes story HTML uses (pages, feeds, app content, partner pushes).

nh3 (Rust's ammonia) does the parsing and allow-listing, so no script, event handler, ``javascript:`` URL or
unknown element survives, whatever the CMS sent. Channels with stricter rules narrow this further.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import ClassVar

import nh3

ALLOWED_TAGS: frozenset[str] = frozenset(
    {
        "a",
        "abbr",
        "b",
        "blockquote",
        "br",
        "caption",
        "cite",
        "code",
        "em",
        "figcaption",
        "figure",
        "h2",
        "h3",
        "h4",
        "hr",
        "i",
        "img",
        "li",
        "ol",
        "p",
        "pre",
        "q",
        "s",
        "small",
        "strong",
        "sub",
        "sup",
        "table",
        "tbody",
        "td",
        "th",
        "thead",
        "tr",
        "u",
        "ul",
    }
)
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "abbr": {"title"},
    "q": {"cite"},
    "blockquote": {"cite"},
}
URL_SCHEMES: frozenset[str] = frozenset({"http", "https", "mailto"})


def clean_html(fragment: str) -> str:
    """The story body reduced to safe, allow-listed HTML (links get rel="noopener noreferrer")."""
    return nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


_BLOCK_BOUNDARY = re.compile(
    r"<(?:/?(?:p|h\d|li|ul|ol|figure|figcaption|div|blockquote|tr|td|th|table)\b[^>]*|br\s*/?)>"
)


def plain_text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed (for summaries, push alerts, search)."""
    spaced = re.sub(
        r"<(?:/?(?:p|h\d|li|ul|ol|figure|figcaption|div|blockquote|tr|td|th|table)\b[^>]*|br\s*/?)>", " ", fragment
    )
    text = nh3.clean(spaced, tags=set(), strip_comments=True)
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


@dataclass(frozen=True)
class Block:
    """One piece of a story body for clients that lay out text themselves (the app): a paragraph, a heading or
    an image."""

    kind: str  # "paragraph" | "heading" | "image"
    text: str = ""
    src: str | None = None
    alt: str | None = None
    caption: str | None = None


class _BlockParser(HTMLParser):
    _TEXT_BLOCKS: ClassVar[dict[str, str]] = {
        "p": "paragraph",
        "li": "paragraph",
        "blockquote": "paragraph",
        "pre": "paragraph",
    }
    _HEADINGS: ClassVar[frozenset[str]] = frozenset({"h2", "h3", "h4"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._kind: str | None = None
        self._text: list[str] = []
        self._in_caption = False
        self._caption: list[str] = []
        self._figure_image: int | None = None

    def _flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self._text)).strip()
        if text:
            self.blocks.append(Block(self._kind or "paragraph", text=text))
        self._kind, self._text = None, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._TEXT_BLOCKS or tag in self._HEADINGS:
            self._flush()
            self._kind = "heading" if tag in self._HEADINGS else self._TEXT_BLOCKS[tag]
        elif tag == "img":
            values = dict(attrs)
            if values.get("src"):
                self._flush()
                self.blocks.append(Block("image", src=values["src"], alt=values.get("alt")))
                self._figure_image = len(self.blocks) - 1
        elif tag == "figcaption":
            self._in_caption, self._caption = True, []
        elif tag == "br":
            self._text.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._TEXT_BLOCKS or tag in self._HEADINGS:
            self._flush()
        elif tag == "figcaption":
            self._in_caption = False
            caption = re.sub(r"\s+", " ", "".join(self._caption)).strip()
            if caption and self._figure_image is not None:
                image = self.blocks[self._figure_image]
                self.blocks[self._figure_image] = Block("image", src=image.src, alt=image.alt, caption=caption)
        elif tag == "figure":
            self._figure_image = None

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self._caption.append(data)
        else:
            self._text.append(data)


def html_blocks(fragment: str) -> list[Block]:
    """The sanitised body as paragraphs, headings and images (with figure captions), in order."""
    parser = _BlockParser()
    parser.feed(clean_html(fragment))
    parser.close()
    parser._flush()
    return parser.blocks
