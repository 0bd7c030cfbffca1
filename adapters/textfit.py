"""Counting and fitting the text of short posts (X, Weibo): each platform's own counting, one fitting rule.

Why one module: both channels build the same kind of post (headline or the channel override, summary, the story
link, hashtags) and must never send one the platform refuses as too long. What differs is only how the platform
counts, so a ``TextCounter`` carries that (limit, length function, where the links are, how a tag becomes a
hashtag) and ``fit_post`` does the rest the same way for both.

Counting:

* **X** (``X_COUNTER``): twitter-text's weighted length, config v3 (code points 0-4351, 8192-8205, 8208-8223 and
  8242-8247 weigh 1, everything else 2; any URL 23; an emoji sequence 2; limit 280). It comes from
  ``twitter-text-parser`` (a maintained Python port of twitter/twitter-text, no dependencies), which passes every
  case of the conformance file's ``WeightedTweetsWithDiscountedEmojiCounterTest`` and
  ``UnicodeDirectionalMarkerCounterTest`` sections (``tests/test_textfit.py`` reads them from
  ``../shared/standards/twitter-text-validate.yml``). Its URL extractor also tells the fitter where links are.
* **Weibo** (``WEIBO_COUNTER``, see ``weibo_length``): Weibo's own counting for ``statuses/share``.

Fitting (``fit_post``): headline (or the channel override) and summary, cut at a sentence boundary, else a clause
or word boundary, else a character boundary, and closed with an ellipsis; then the story URL; then hashtags from
the story's tags, each only while it still fits. A cut never falls inside a URL, a surrogate pair (Python strings
are code points, so a pair cannot be split) or a grapheme cluster (``regex``'s ``\\X``: an emoji ZWJ sequence, a
flag, a letter with its combining accents stay whole). The result carries the platform's count and a warning for
everything trimmed or left out: that is what ``syndicate preview`` shows.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import regex
from twitter_text import parse_tweet
from twitter_text.extract_urls import extract_urls_with_indices

from syndicate.sanitize import plain_text
from syndicate.story import ChannelStory

__all__ = [
    "ELLIPSIS",
    "WEIBO_COUNTER",
    "X_COUNTER",
    "FitError",
    "FittedPost",
    "TextCounter",
    "compose_lead",
    "fit_post",
    "grapheme_boundaries",
    "same_post_text",
    "weibo_length",
    "weibo_url_spans",
    "x_hashtag",
    "x_is_valid",
    "x_url_spans",
    "x_weighted_length",
]

ELLIPSIS = "…"
#: A summary cut shorter than this many grapheme clusters is left out instead: a stub reads worse than nothing.
MIN_SUMMARY_CLUSTERS = 8
#: A sentence or clause boundary is preferred to a finer cut only when it keeps at least this share of the room.
PREFERRED_BOUNDARY_SHARE = 0.5

Span = tuple[int, int]


class FitError(ValueError):
    """Nothing sensible fits (e.g. the story URL alone is over the limit); the message says what to shorten."""


# --------------------------------------------------------------------------------------------------- counters


@dataclass(frozen=True)
class TextCounter:
    """One platform's length rule: its limit, its count, where its links are and how tags become hashtags."""

    name: str
    limit: int
    length: Callable[[str], int]
    url_spans: Callable[[str], list[Span]]
    #: ``tag -> "#tag"`` (None for a tag that cannot be a hashtag); None when the platform refuses hashtags.
    hashtag: Callable[[str], str | None] | None
    #: Why there are no hashtags on this platform (a warning when the story has tags).
    no_hashtags_reason: str = ""
    #: A cheap lower bound of what appending a text adds to the count: hashtags that cannot fit are left out
    #: without counting the whole post again.
    least_added: Callable[[str], int] = lambda text: 0
    #: The count of ``lead + " " + link`` is the lead's plus the tail's: the fitter counts the lead alone while it
    #: searches (twitter-text's link finder is quadratic on a long CJK run once a '.' is in it, and the link's
    #: dot would put one there), then counts the whole post once and searches again exactly if that disagrees.
    tail_adds_up: bool = False

    def fits(self, text: str) -> bool:
        return self.length(text) <= self.limit


# ---- X


def x_weighted_length(text: str) -> int:
    """twitter-text config v3 weighted length (what X counts against 280)."""
    return int(parse_tweet(text).weightedLength)


def x_is_valid(text: str) -> bool:
    """twitter-text validity: within 280 weighted and free of the characters X refuses (U+FFFE, U+FFFF...)."""
    return bool(parse_tweet(text).valid)


def x_url_spans(text: str) -> list[Span]:
    """The links X recognises (and counts as 23 each), as code point index ranges."""
    return [(int(found["indices"][0]), int(found["indices"][1])) for found in extract_urls_with_indices(text)]


_HASHTAG_DROP = regex.compile(r"[^\p{L}\p{M}\p{N}_]+")


def x_hashtag(tag: str) -> str | None:
    """``#tag`` with what a hashtag cannot hold removed (spaces, punctuation); None if nothing usable is left or
    only digits (X does not link an all-digit hashtag)."""
    word = _HASHTAG_DROP.sub("", unicodedata.normalize("NFC", tag))
    if not word or word.isdigit():
        return None
    return f"#{word}"


def grapheme_count(text: str) -> int:
    return len(regex.findall(r"\X", text))


#: twitter-text weighs every code point 1 or 2 and an emoji sequence 2: a cluster never counts less than 1.
X_COUNTER = TextCounter(
    name="X",
    limit=280,
    length=x_weighted_length,
    url_spans=x_url_spans,
    hashtag=x_hashtag,
    least_added=grapheme_count,
    tail_adds_up=True,
)

# ---- Weibo
#
# Weibo's documented rule for statuses/share (https://open.weibo.com/wiki/2/statuses/share): the status is
# "内容不超过140个汉字" (at most 140 Chinese characters) and must contain a link on the app's safe domain; the text
# may not contain "#话题词#" (so no hashtags here). Weibo counts in Chinese characters: a half-width character
# (U+0000-U+00FF: ASCII letters, digits, spaces, half-width punctuation) counts half ("两个半角字符算一个字"), any
# other BMP character one, a character outside the BMP (most emoji) two, and the total is rounded up. Every link is
# replaced by a t.cn short link ("http://t.cn/" + 8 characters = 20 half-width characters), so a link counts 10
# whatever its length; a link over 140 half-width characters is counted at its full length here to stay safe.
# This is the counter Weibo's own publisher shows (documented by observers since 2012, e.g.
# schappo.blogspot.com/2012/10/weibo-character-count.html); the stand-in applies the same rule with error 20012.

WEIBO_LIMIT = 140
#: Half-width characters a link occupies once Weibo has replaced it by its t.cn short link.
WEIBO_SHORT_LINK_UNITS = 20
WEIBO_LONG_LINK = 140
_WEIBO_URL = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


def weibo_url_spans(text: str) -> list[Span]:
    """The http(s) links Weibo turns into t.cn short links."""
    return [match.span() for match in _WEIBO_URL.finditer(text)]


def _weibo_half_units(text: str) -> int:
    units = 0
    for char in text:
        point = ord(char)
        units += 1 if point <= 0xFF else 2 if point <= 0xFFFF else 4
    return units


def weibo_length(text: str) -> int:
    """Weibo's count of ``text`` in Chinese characters (the limit is 140); see the rule above."""
    units, position = 0, 0
    for start, end in weibo_url_spans(text):
        units += _weibo_half_units(text[position:start])
        link = end - start
        units += WEIBO_SHORT_LINK_UNITS if link <= WEIBO_LONG_LINK else _weibo_half_units(text[start:end])
        position = end
    units += _weibo_half_units(text[position:])
    return math.ceil(units / 2)


WEIBO_COUNTER = TextCounter(
    name="Weibo",
    limit=WEIBO_LIMIT,
    length=weibo_length,
    url_spans=weibo_url_spans,
    hashtag=None,
    no_hashtags_reason='Weibo\'s statuses/share refuses a status containing "#topic#"',
)


def same_post_text(ours: str, theirs: str, url_spans: Callable[[str], list[Span]]) -> bool:
    """Is ``theirs`` (as the platform shows a post) the text we sent? Platforms replace links by short links
    (t.co, t.cn), so links compare as placeholders and whitespace is collapsed."""

    def masked(text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        out, position = [], 0
        for start, end in url_spans(text):
            out.append(text[position:start])
            out.append("\x00")
            position = end
        out.append(text[position:])
        return re.sub(r"\s+", " ", "".join(out)).strip()

    return masked(ours) == masked(theirs)


# ---------------------------------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class FittedPost:
    """The final text, its length in the platform's counting, and what was trimmed to make it fit."""

    text: str
    length: int
    limit: int
    hashtags: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def trimmed(self) -> bool:
        return bool(self.warnings)


_CJK = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]")
_SENTENCE_END = regex.compile(r"(?:[。！？!?…]|\.(?=\s|$))[”’」』)）]*")
_CLAUSE_END = regex.compile(r"[，、；：,;:—]")
_TRAILING_PUNCTUATION = "，、；：,;:—-–。！？!?.… \t"


def _clean(text: str | None) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text or "")).strip()


def _is_cjk(language: str | None, text: str) -> bool:
    if language and language.split("-")[0].lower() in ("zh", "ja", "ko"):
        return True
    return len(_CJK.findall(text)) * 2 >= len(text.replace(" ", "")) > 0


def compose_lead(headline: str, summary: str, *, cjk: bool) -> tuple[str, str]:
    """Headline and summary joined as each language's news posts join them: ``【标题】摘要`` for Chinese,
    ``Headline: Summary`` otherwise. Returns (prefix, summary): the summary is the part the fitter may cut."""
    if not summary:
        return headline, ""
    if cjk:
        return f"【{headline}】", summary
    joiner = " " if headline[-1:] in ".!?…" else ": "
    return f"{headline}{joiner}", summary


def grapheme_boundaries(text: str) -> list[int]:
    """Every index at which ``text`` may be cut without splitting a grapheme cluster (0 and len included)."""
    return [0, *(match.end() for match in regex.finditer(r"\X", text))]


def _inside(position: int, spans: Sequence[Span]) -> bool:
    return any(start < position < end for start, end in spans)


def _cut(text: str, position: int) -> str:
    kept = text[:position].rstrip()
    while kept and kept[-1] in _TRAILING_PUNCTUATION:
        kept = kept[:-1].rstrip()
    return f"{kept}{ELLIPSIS}" if kept else ""


@dataclass(frozen=True)
class _Cut:
    text: str  # the cut text, ellipsis included ("" when nothing could be kept)
    kept: int  # code points of the original kept
    kind: str  # "sentence", "clause", "word" or "character"


def _best_cut(segment: str, fits: Callable[[str], bool], url_spans: Callable[[str], list[Span]]) -> _Cut | None:
    """The longest cut of ``segment`` (prefix + ellipsis) that ``fits``, at the best boundary available."""
    spans = url_spans(segment)
    allowed = [b for b in grapheme_boundaries(segment) if 0 < b < len(segment) and not _inside(b, spans)]

    def fits_at(index: int) -> bool:  # an empty cut is short: it "fits" for the search, and is no answer
        candidate = _cut(segment, allowed[index])
        return not candidate or fits(candidate)

    # The last boundary that fits (longer prefixes never count less): gallop from the start, then bisect, so no
    # probe is much longer than what fits. Bisecting the whole segment would count a 5,000-character summary
    # a dozen times to keep 140 of it (twitter-text's count is the slow part, about 30 µs a character).
    best, probe, high = -1, 0, len(allowed) - 1
    while probe <= high:
        if not fits_at(probe):
            high = probe - 1
            break
        best, probe = probe, 2 * probe + 1
    low = best + 1
    while low <= high:
        middle = (low + high) // 2
        if fits_at(middle):
            best, low = middle, middle + 1
        else:
            high = middle - 1
    if best < 0 or not _cut(segment, allowed[best]):
        return None
    room = allowed[best]
    cjk_text = _is_cjk(None, segment[:room])
    sentence = {m.end() for m in _SENTENCE_END.finditer(segment)}
    clause = {m.end() for m in _CLAUSE_END.finditer(segment)}
    word = {i for i in range(1, room + 1) if segment[i].isspace() or segment[i - 1].isspace()}
    if cjk_text:  # no spaces between words: any cut between two ideographs is a word boundary
        word |= {i for i in range(1, room + 1) if _CJK.match(segment[i - 1]) and _CJK.match(segment[i])}
    candidates = allowed[: best + 1]
    for kind, marks, share in (
        ("sentence", sentence, PREFERRED_BOUNDARY_SHARE),
        ("clause", clause, PREFERRED_BOUNDARY_SHARE),
        ("word", word, 0.0),
    ):
        usable = [b for b in candidates if b in marks and _cut(segment, b)]
        if usable and usable[-1] >= share * room:
            return _Cut(_cut(segment, usable[-1]), usable[-1], kind)
    return _Cut(_cut(segment, room), room, "character")


def _quote(text: str, limit: int = 40) -> str:
    text = text.strip()
    return f"“{text if len(text) <= limit else text[: limit - 1] + ELLIPSIS}”"


def fit_post(
    counter: TextCounter,
    *,
    headline: str,
    summary: str | None = None,
    text: str | None = None,
    url: str | None = None,
    tags: Sequence[str] = (),
    language: str | None = None,
) -> FittedPost:
    """The post for ``counter``'s platform: the lead (``text`` when a channel override gives one, else headline
    and summary), cut to fit with an ellipsis, then ``url`` (never cut), then hashtags while they fit.

    Deterministic: the same input gives the same post. Raises FitError when not even a cut headline fits beside
    the URL.
    """
    headline, summary, override, url = _clean(headline), _clean(summary), _clean(text), _clean(url)
    if summary and (summary == headline or summary.startswith(headline + " ")):
        summary = ""
    if counter.tail_adds_up:
        post = _fit(counter, headline, summary, override, url, tags, language, split_tail=True)
        if post.length <= counter.limit:
            return post
    return _fit(counter, headline, summary, override, url, tags, language, split_tail=False)


def _fit(
    counter: TextCounter,
    headline: str,
    summary: str,
    override: str,
    url: str,
    tags: Sequence[str],
    language: str | None,
    *,
    split_tail: bool,
) -> FittedPost:
    tail = f" {url}" if url else ""
    tail_units = counter.length(tail) if split_tail and tail else 0
    warnings: list[str] = []
    where = f"{counter.name}'s limit of {counter.limit}"

    def fits(lead: str) -> bool:
        if split_tail and tail:
            return counter.length(lead) + tail_units <= counter.limit
        return counter.fits(f"{lead}{tail}")

    def fits_whole(lead: str) -> bool:
        # Growing prefixes first (cut between grapheme clusters): when one is over the limit the whole is, and an
        # over-long lead costs the count of a short prefix instead of its own.
        size = 64
        while size < len(lead):
            prefix = regex.match(rf"\X{{{size}}}", lead)  # whole clusters only
            if prefix is not None and not fits(prefix.group()):
                return False
            size *= 4
        return fits(lead)

    if override:
        prefix, body, what = "", override, "the channel's text override"
    else:
        prefix, body = compose_lead(headline, summary, cjk=_is_cjk(language, headline + summary))
        what = "summary"
    lead = prefix + body
    if not fits_whole(lead):
        # A headline that does not fit alone leaves no room for any of the summary: no probe needed.
        summary_room = bool(body) and (not prefix or fits_whole(prefix))
        cut = _best_cut(body, lambda candidate: fits(prefix + candidate), counter.url_spans) if summary_room else None
        if cut is not None and (override or len(grapheme_boundaries(body[: cut.kept])) - 1 >= MIN_SUMMARY_CLUSTERS):
            lead = prefix + cut.text
            warnings.append(
                f"{what} cut at a {cut.kind} boundary to fit {where}: kept {cut.kept} of {len(body)} characters, "
                f"left out {_quote(body[cut.kept :])}"
            )
        elif not override and fits_whole(headline):
            lead = headline
            if summary:
                warnings.append(f"summary left out to fit {where}: {_quote(summary)}")
        else:
            source = headline if not override else override
            cut = _best_cut(source, fits, counter.url_spans)
            if cut is None:
                raise FitError(
                    f"not even a shortened {'headline' if not override else 'text override'} fits beside the "
                    f"link within {where} (url: {url!r} counts {counter.length(url)})"
                )
            lead = cut.text
            warnings.append(
                f"{'headline' if not override else what} cut at a {cut.kind} boundary to fit {where}: kept "
                f"{cut.kept} of {len(source)} characters, left out {_quote(source[cut.kept :])}"
            )
            if summary and not override:
                warnings.append(f"summary left out to fit {where}: {_quote(summary)}")
    post = f"{lead}{tail}"
    hashtags: list[str] = []
    if tags and counter.hashtag is None:
        warnings.append(f"tags not added as hashtags: {counter.no_hashtags_reason}")
    elif counter.hashtag is not None:
        left_out: list[str] = []
        used = counter.length(post)
        for tag in tags:
            hashtag = counter.hashtag(tag)
            if hashtag is None or hashtag in hashtags:
                continue
            longer = f"{post} {hashtag}"
            if used + counter.least_added(f" {hashtag}") <= counter.limit and counter.fits(longer):
                post = longer
                used = counter.length(post)
                hashtags.append(hashtag)
            else:
                left_out.append(hashtag)
        if left_out:
            warnings.append(f"hashtags left out for lack of room within {where}: {' '.join(left_out)}")
    return FittedPost(
        text=post,
        length=counter.length(post),
        limit=counter.limit,
        hashtags=tuple(hashtags),
        warnings=tuple(warnings),
    )


def fit_story(counter: TextCounter, story: ChannelStory) -> FittedPost:
    """The post for ``story`` as its channel sees it: the channel's text where it gives one, else its headline
    and summary (overrides already applied), as plain text. FitError when even the headline cannot fit."""
    return fit_post(
        counter,
        headline=plain_text(story.headline),
        summary=plain_text(story.summary or ""),
        text=plain_text(story.text) if story.text else None,
        url=story.url,
        tags=story.tags,
        language=story.language,
    )
