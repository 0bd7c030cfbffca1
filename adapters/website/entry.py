"""The facts an index page and the sitemap need about one live page (part of the stored payload, too)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pydantic import ConfigDict


@dataclass(frozen=True)
class PageEntry:
    """One live page as the site index, the index pages and the sitemap know it."""

    #: As a field of the payload model: unknown keys are refused there too.
    __pydantic_config__ = ConfigDict(extra="forbid")

    story_id: str
    version: int
    path: str
    headline: str
    summary: str
    section: str
    section_slug: str
    language: str
    published: str  # RFC 3339, in the story's own offset
    modified: str
    cover_src: str | None
    cover_alt: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PageEntry:
        return cls(**{f.name: raw[f.name] for f in fields(cls)})

    @property
    def published_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.published)
