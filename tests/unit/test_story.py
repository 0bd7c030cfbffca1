"""Tests for the canonical story: error paths, canonical JSON, ninjs 2.2 import/export and the content hash.

Official ninjs data is read from ../shared/standards (never copied into the project); those tests skip with a
message when the folder is absent outside CI, and fail in CI.
"""

from __future__ import annotations

import copy
import html
import json
import pickle
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from syndicate.ninjs import NINJS_URI_PREFIX, from_ninjs, read_document, to_ninjs, validate_ninjs
from syndicate.story import (
    ChannelOverride,
    FieldError,
    Image,
    Story,
    StoryValidationError,
)
from tests.support import SHARED, shared_path

STANDARDS = SHARED / "standards"
SAMPLE = SHARED / "samples" / "district-media-centres.txt"
EXAMPLES = (
    "001_simple_example.json",
    "002_renditions_example.json",
    "003_associations_example.json",
    "004_simple_text_article.json",
    "005_complex_text_article.json",
    "006_photo_only.json",
    "007_multimedia.json",
)
CST = timezone(timedelta(hours=8))

# Quoted from shared/samples/district-media-centres.txt, so tests that need no shared data run without it.
HEADLINE = "上海16区融媒体中心全部建成并挂牌 首推融媒产品“宝山汇”APP"
LEAD = "宝山、闵行两个区级融媒体中心的正式挂牌,也正是上海全力推进区级融媒体中心建设不断取得阶段性成果的缩影"
CAPTION = "上海16区融媒体客户端入驻人民号 (主办方供图)"


def _shared(path: Path) -> Path:
    return shared_path(str(path.relative_to(SHARED)))


@pytest.fixture(scope="session")
def schema() -> dict[str, Any]:
    return json.loads((_shared(STANDARDS) / "ninjs-schema_2.2.json").read_text("utf-8"))


def _example(name: str) -> dict[str, Any]:
    return json.loads((_shared(STANDARDS) / "ninjs-2.2-examples" / name).read_text("utf-8"))


def _story(**changes: Any) -> Story:
    fields: dict[str, Any] = {"id": "cms-20190918-0042", "headline": HEADLINE, "body_html": f"<p>{LEAD}</p>"}
    fields.update(changes)
    return Story(**fields)


def _errors(exc_info: pytest.ExceptionInfo[StoryValidationError]) -> dict[str, str]:
    return {error.path: error.problem for error in exc_info.value.errors}


@pytest.fixture(scope="session")
def rich_story() -> Story:
    """The sample report as a full story: images, tags, section, url, embargo, routing."""
    lines = _shared(SAMPLE).read_text("utf-8").splitlines()
    article = lines[: lines.index("相关阅读")]  # what follows is the page's related-links sidebar
    captions = [line for line in article if "供图" in line]
    paragraphs = [line for line in article[1:] if line.strip() and line not in captions]
    return Story(
        id="cms-20190918-0042",
        version=3,
        headline=article[0],
        subheadline=paragraphs[2],
        summary=paragraphs[1].split("——")[0],
        body_html="\n".join(f"<p>{html.escape(p, quote=False)}</p>" for p in paragraphs),
        by="人民网",
        language="zh-CN",
        url="https://sh.example.cn/n1/2019/0918/district-media-centres.html",
        published_at=datetime(2019, 9, 18, 10, 0, tzinfo=CST),
        updated_at="2019-09-18T11:30:00+08:00",
        embargo_until="2019-09-18T01:30:00Z",
        urgency=4,
        images=[
            Image(href="https://media.example.cn/story-green-800x800.png", caption=captions[1], width=800, height=800),
            Image(
                href="https://media.example.cn/story-amber-1200x675.png",
                caption=captions[0],
                alt="上海16区融媒体客户端",
                width=1200,
                height=675,
                role="cover",
            ),
        ],
        tags=["融媒体", "宝山汇", "闵行"],
        section="上海",
        targets=["weibo", "wechat"],
        overrides={"weibo": ChannelOverride(headline="上海16区融媒体中心全部建成并挂牌")},
    )


# ------------------------------------------------------------------------------------------- ninjs examples

# headline prefix, body prefix, image hrefs (suffixes) with widths and roles
EXPECTED_IMPORT: dict[str, tuple[str, str, list[tuple[str, int | None, str]]]] = {
    "001_simple_example.json": ("Captain of wrecked cruise ship", "<p>GROSSETO, Italy (AP)", []),
    "002_renditions_example.json": ("...", "<p>...</p>", []),
    "003_associations_example.json": (
        "Dell Redefines Workstation",
        "[ ... ]",
        [("/221373/3/dell_blue_rgb.jpg", None, "inline"), ("/369394/3/0025lf.jpg", None, "inline")],
    ),
    "004_simple_text_article.json": ("Captain of wrecked", "<p>GROSSETO, Italy (AP) -- The trial", []),
    "005_complex_text_article.json": ("Captain of wrecked", "<p>GROSSETO, Italy (AP) -- The trial", []),
    "006_photo_only.json": ("Costa Concordia cruise ship", "", [("e3b904edbb3a-big.jpg", 429, "cover")]),
    "007_multimedia.json": (
        "Captain of wrecked",
        "<p>GROSSETO, Italy (AP) -- The trial",
        [("e3b904edbb3a-big.jpg", 429, "inline"), ("e3b904xyz000-big.jpg", 280, "inline")],
    ),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_official_example_imports(name: str) -> None:
    doc = _example(name)
    story = from_ninjs(doc)
    headline, body, images = EXPECTED_IMPORT[name]
    assert story.id == doc["uri"]
    assert story.headline.startswith(headline)
    assert story.body_html.startswith(body)
    got = [(image.href, image.width, image.role) for image in story.images]
    assert len(got) == len(images)
    for (href, width, role), (suffix, expected_width, expected_role) in zip(got, images, strict=True):
        assert href.endswith(suffix)
        assert (width, role) == (expected_width, expected_role)


def test_example_details_map_to_the_right_fields() -> None:
    photo = from_ninjs(_example("006_photo_only.json"))
    assert photo.summary is not None and photo.summary.startswith("The Costa Concordia cruise ship lies")
    assert photo.cover is not None and photo.cover.height == 281
    assert photo.updated_at == datetime(2013, 7, 8, 8, 12, tzinfo=UTC)
    assert photo.by == "Paulo Santalucia"

    rich = from_ninjs(_example("004_simple_text_article.json"))
    assert "</p> <p>The sole defendant" in rich.body_html  # the xhtml body wins over the plain one

    multimedia = from_ninjs(_example("007_multimedia.json"))
    assert [image.caption for image in multimedia.images] == [
        "Costa Concordia cruise ship",
        "Francesco Schettino at court",
    ]
    assert multimedia.language == "en"
    assert multimedia.cover == multimedia.images[0]

    assert from_ninjs(_example("003_associations_example.json")).version == 1


@pytest.mark.parametrize("name", EXAMPLES)
def test_export_of_every_example_validates(name: str, schema: dict[str, Any]) -> None:
    validate_ninjs(to_ninjs(from_ninjs(_example(name))), schema)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_survives_a_round_trip(name: str) -> None:
    story = from_ninjs(_example(name))
    assert from_ninjs(to_ninjs(story)).to_dict() == story.to_dict()


@pytest.mark.parametrize("name", EXAMPLES)
def test_official_examples_validate_without_format_assertion(name: str, schema: dict[str, Any]) -> None:
    validate_ninjs(_example(name), schema, check_formats=False)


def test_format_assertion_catches_relative_uri(schema: dict[str, Any]) -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        validate_ninjs(_example("002_renditions_example.json"), schema)
    assert list(_errors(exc_info)) == ["uri"]


# -------------------------------------------------------------------------------------- rich story, export


def test_rich_story_round_trips_through_ninjs(rich_story: Story, schema: dict[str, Any]) -> None:
    exported = to_ninjs(rich_story)
    validate_ninjs(exported, schema)
    back = from_ninjs(json.loads(json.dumps(exported)))

    not_exported = {"targets", "overrides"}
    expected = {k: v for k, v in rich_story.to_dict().items() if k not in not_exported}
    assert {k: v for k, v in back.to_dict().items() if k not in not_exported} == expected
    assert back.targets is None and back.overrides == {}
    assert back.content_hash != rich_story.content_hash  # routing is content for the hash, and was dropped


def test_rich_story_export_shape(rich_story: Story) -> None:
    exported = to_ninjs(rich_story)
    assert exported["uri"] == NINJS_URI_PREFIX + "cms-20190918-0042"
    assert (exported["type"], exported["representationtype"], exported["version"]) == ("composite", "full", "3")
    assert exported["embargoed"] == "2019-09-18T01:30:00Z"
    assert exported["firstcreated"] == "2019-09-18T10:00:00+08:00"
    assert exported["altids"] == [{"role": "url", "value": rich_story.url}]
    assert {"name": "上海", "rel": "section"} in exported["subjects"]
    assert [a["name"] for a in exported["associations"]] == ["image-1", "cover"]
    cover = exported["associations"][1]
    assert cover["renditions"] == [
        {
            "name": "original",
            "href": "https://media.example.cn/story-amber-1200x675.png",
            "width": 1200,
            "height": 675,
            "contenttype": "image/png",
        }
    ]
    assert cover["descriptions"] == [{"role": "alt", "value": "上海16区融媒体客户端"}]
    assert "weibo" not in json.dumps(exported, ensure_ascii=False)  # routing has no ninjs home


def test_validate_ninjs_reports_paths(rich_story: Story, schema: dict[str, Any]) -> None:
    broken = copy.deepcopy(to_ninjs(rich_story))
    broken["urgency"] = "high"
    broken["bogus"] = 1
    del broken["associations"][1]["uri"]
    broken["firstcreated"] = "2019-09-18 10:00"
    with pytest.raises(StoryValidationError) as exc_info:
        validate_ninjs(broken, schema)
    errors = _errors(exc_info)
    assert set(errors) >= {"urgency", "associations[1]", "firstcreated", "$"}
    assert "bogus" in errors["$"]


def test_geojson_reference_does_not_need_the_network(schema: dict[str, Any]) -> None:
    doc = {"uri": "http://example.com/a", "places": [{"name": "宝山", "geojson": {"type": "Point"}}]}
    validate_ninjs(doc, schema)


def test_canonical_json_round_trip() -> None:
    story = _story(
        published_at="2019-09-18T10:00:00+08:00",
        images=[{"href": "https://media.example.cn/a.png", "role": "cover"}],
        targets=[],
        overrides={"wechat": {"summary": LEAD}},
    )
    raw = story.to_json()
    assert HEADLINE in raw  # UTF-8, not \u escapes
    assert json.loads(raw)["published_at"] == "2019-09-18T10:00:00+08:00"
    again = Story.from_json(raw.encode("utf-8"))
    assert again == story and again.to_dict() == story.to_dict()
    assert again.targets == []  # an empty target list (send nowhere) is not None (send everywhere)


# ---------------------------------------------------------------------------------------------- errors


def test_missing_headline_is_named() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        Story.from_dict({"id": "cms-1"})
    assert exc_info.value.errors == [FieldError("headline", "field required")]


def test_blank_headline_only_allowed_when_canceled() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        _story(headline="   ")
    assert list(_errors(exc_info)) == ["headline"]
    retraction = Story.from_dict({"id": "cms-1", "pubstatus": "canceled"})
    assert retraction.headline == "" and retraction.is_retraction
    assert _story(pubstatus="withheld").is_retraction and not _story().is_retraction


def test_bad_image_href_is_named_with_its_index() -> None:
    images = [{"href": "https://media.example.cn/a.png"}, {"href": "javascript:alert(1)"}]
    with pytest.raises(StoryValidationError) as exc_info:
        Story.from_dict({"id": "cms-1", "headline": HEADLINE, "images": images})
    assert _errors(exc_info) == {"images[1].href": "must be an http(s) URL"}


def test_naive_datetime_is_named() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        _story(published_at="2019-09-18T10:00:00", embargo_until=datetime(2019, 9, 18, 9))
    assert _errors(exc_info) == {
        "published_at": "must be timezone-aware (add Z or +08:00)",
        "embargo_until": "must be timezone-aware (add Z or +08:00)",
    }


def test_naive_ninjs_timestamp_names_the_ninjs_field() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        from_ninjs({"uri": "cms-1", "headlines": [{"value": HEADLINE}], "firstcreated": "2019-09-18T10:00"})
    assert _errors(exc_info) == {"firstcreated": "must be timezone-aware (add Z or +08:00)"}


@pytest.mark.parametrize("version", ["abc", "0", "-1", "1.5", 3, ""])
def test_ninjs_version_must_be_a_positive_integer_string(version: object) -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        from_ninjs({"uri": "cms-1", "headlines": [{"value": HEADLINE}], "version": version})
    assert list(_errors(exc_info)) == ["version"]


def test_ninjs_errors_name_ninjs_paths() -> None:
    doc = {
        "uri": "cms-1",
        "headlines": [{"role": "main", "value": " "}],
        "urgency": 12,
        "associations": [
            {"name": "cover", "uri": "cms-img-1", "type": "picture", "renditions": [{"name": "o", "href": 7}]},
            {
                "name": "cover",
                "uri": "cms-img-2",
                "type": "picture",
                "renditions": [{"name": "o", "href": "https://media.example.cn/b.png", "width": -5}],
            },
        ],
    }
    with pytest.raises(StoryValidationError) as exc_info:
        from_ninjs(doc)
    assert set(_errors(exc_info)) == {"headlines[0].value", "urgency", "associations[1].renditions[0].width"}


def test_ninjs_1x_documents_are_refused_clearly() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        read_document({"uri": "cms-1", "headline": HEADLINE, "associations": {"main": {}}})
    errors = _errors(exc_info)
    assert "ninjs 1.x" in errors["headline"] and "ninjs 1.x" in errors["associations"]


def test_unknown_keys_are_named() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        Story.from_dict(
            {
                "id": "cms-1",
                "headline": HEADLINE,
                "colour": "red",
                "images": [{"href": "https://media.example.cn/a.png", "colour": "red"}],
                "overrides": {"wechat": {"headlne": "typo"}},
            }
        )
    assert _errors(exc_info) == {
        "colour": "unknown field",
        "images[0].colour": "unknown field",
        "overrides.wechat.headlne": "unknown field",
    }


def test_malformed_json_reports_position() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        Story.from_json('{"id": "cms-1",\n "headline": }')
    [error] = exc_info.value.errors
    assert error.path == "$"
    assert "malformed JSON" in error.problem and "line 2, column 14" in error.problem
    with pytest.raises(StoryValidationError):
        Story.from_json(b"\xff\xfe\x00")
    with pytest.raises(StoryValidationError) as exc_info:
        Story.from_json("[]")
    assert exc_info.value.errors == [FieldError("$", "must be a JSON object")]


def test_every_problem_is_reported_on_its_own_line() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        Story.from_dict({"id": "cms 1", "headline": HEADLINE, "version": 0, "urgency": "3", "url": "ftp://x"})
    assert str(exc_info.value).splitlines() == [
        "id: must not contain whitespace or control characters (found U+0020)",
        "version: must be an integer from 1 to 2147483647",
        "url: must be an http(s) URL",
        "urgency: must be an integer",
    ]
    assert isinstance(exc_info.value, ValueError)
    revived = pickle.loads(pickle.dumps(exc_info.value))
    assert revived.errors == exc_info.value.errors


def test_direct_construction_raises_story_validation_error() -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        Story(id="cms-1", headline=HEADLINE, images=[Image(href="https://a.example/x.png", role="cover")] * 2)
    assert list(_errors(exc_info)) == ["images"]
    with pytest.raises(StoryValidationError) as exc_info:
        Image(href="https://a.example/x.png", width=0)
    assert _errors(exc_info) == {"width": "must be an integer from 1 to 100000"}
    with pytest.raises(StoryValidationError):
        Story.model_validate({"id": "cms-1"})


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"id": ""}, "id"),
        ({"id": "x" * 201}, "id"),
        ({"id": "cms\u200b1"}, "id"),
        ({"language": "zh CN"}, "language"),
        ({"urgency": 10}, "urgency"),
        ({"urgency": True}, "urgency"),
        ({"published_at": 1568772000}, "published_at"),
        ({"published_at": "2019-02-30T10:00:00Z"}, "published_at"),
        ({"tags": ["上海", " "]}, "tags[1]"),
        ({"targets": ["weibo", ""]}, "targets[1]"),
        ({"overrides": {" ": {}}}, "overrides"),
        ({"pubstatus": "deleted"}, "pubstatus"),
        ({"url": "https:///no-host"}, "url"),
    ],
)
def test_field_rules(changes: dict[str, Any], path: str) -> None:
    with pytest.raises(StoryValidationError) as exc_info:
        _story(**changes)
    assert list(_errors(exc_info)) == [path]


def test_from_document_dispatches_on_keys() -> None:
    assert read_document(_story().to_dict()) == _story()
    assert read_document({"uri": "cms-1", "headlines": [{"value": HEADLINE}]}).headline == HEADLINE
    with pytest.raises(StoryValidationError) as exc_info:
        read_document({"title": HEADLINE})
    [error] = exc_info.value.errors
    assert error.path == "$" and "'id'" in error.problem and "'uri'" in error.problem
    with pytest.raises(StoryValidationError) as exc_info:
        read_document({"headline": HEADLINE})
    assert list(_errors(exc_info)) == ["id"]


# ------------------------------------------------------------------------------------------ ninjs mapping


@pytest.mark.parametrize(
    ("story_id", "uri"),
    [
        ("cms-20190918-0042", "urn:syndicate:story:cms-20190918-0042"),
        ("http://ninjs.example.com/newsitems/1", "http://ninjs.example.com/newsitems/1"),
        ("稿件/42?v", "urn:syndicate:story:%E7%A8%BF%E4%BB%B6/42%3Fv"),
        ("urn:syndicate:story:x", "urn:syndicate:story:urn:syndicate:story:x"),
    ],
)
def test_uri_mapping_round_trips(story_id: str, uri: str) -> None:
    exported = to_ninjs(_story(id=story_id))
    assert exported["uri"] == uri
    assert from_ninjs(exported).id == story_id


def test_plain_text_body_becomes_escaped_paragraphs() -> None:
    doc = {"uri": "cms-1", "headlines": [{"value": HEADLINE}], "bodies": [{"value": "a < b & c\nline 2\n\nnext"}]}
    assert from_ninjs(doc).body_html == "<p>a &lt; b &amp; c<br>line 2</p>\n<p>next</p>"
    doc["bodies"] = [{"contenttype": "text/plain", "value": f"{LEAD}\n{CAPTION}"}]
    assert from_ninjs(doc).body_html == f"<p>{LEAD}</p>\n<p>{CAPTION}</p>"


def test_ninjs_text_roles() -> None:
    doc = {
        "uri": "cms-1",
        "headlines": [{"role": "sub", "value": "副标题"}, {"role": "main", "value": HEADLINE}],
        "descriptions": [
            {"role": "alt", "value": "not a summary"},
            {"role": "text", "contenttype": "text/html", "value": "<p>html</p>"},
            {"role": "text", "value": LEAD},
        ],
        "subjects": [{"name": "上海", "rel": "section"}, {"name": "融媒体"}, {"literal": "宝山汇", "rel": "about"}],
    }
    story = from_ninjs(doc)
    assert (story.headline, story.subheadline, story.summary) == (HEADLINE, "副标题", LEAD)
    assert (story.section, story.tags) == ("上海", ["融媒体", "宝山汇"])
    doc["descriptions"].append({"role": "summary", "value": "摘要"})
    assert from_ninjs(doc).summary == "摘要"


def test_association_images_pick_the_largest_usable_rendition() -> None:
    renditions = [
        {"name": "small", "href": "https://media.example.cn/s.jpg", "width": 120.0, "height": 80},
        {"name": "huge", "width": 4000},  # no href: unusable whatever its size
        {"name": "big", "href": "https://media.example.cn/b.jpg", "width": 1200, "height": 800},
        {"name": "ftp", "href": "ftp://media.example.cn/f.jpg", "width": 9000},
    ]
    doc = {
        "uri": "cms-1",
        "headlines": [{"value": HEADLINE}],
        "associations": [
            {"name": "video", "uri": "https://media.example.cn/v.mp4", "type": "video"},
            {"name": "nothing", "uri": "tag:example,2019:img", "type": "picture"},
            {"name": "cover", "uri": "tag:example,2019:img2", "type": "graphic", "renditions": renditions},
        ],
    }
    [image] = from_ninjs(doc).images
    assert (image.href, image.width, image.height, image.role) == ("https://media.example.cn/b.jpg", 1200, 800, "cover")


def test_top_level_picture_becomes_the_cover() -> None:
    doc = {
        "uri": "cms-1",
        "type": "picture",
        "headlines": [{"value": CAPTION}],
        "renditions": [{"name": "main", "href": "https://media.example.cn/p.jpg", "width": 640}],
        "associations": [{"name": "cover", "uri": "https://media.example.cn/other.jpg", "type": "picture"}],
    }
    story = from_ninjs(doc)
    assert [(i.href, i.role) for i in story.images] == [
        ("https://media.example.cn/p.jpg", "cover"),
        ("https://media.example.cn/other.jpg", "inline"),
    ]
    assert story.cover == story.images[0]


def test_cover_property() -> None:
    inline = Image(href="https://media.example.cn/a.png")
    cover = Image(href="https://media.example.cn/b.png", role="cover")
    assert _story(images=[inline, cover]).cover == cover
    assert _story(images=[inline]).cover == inline
    assert _story().cover is None


def test_iri_hrefs_are_stored_as_uris() -> None:
    image = Image(href="https://媒体.example.cn/图片/宝山汇.png?说明=封面")
    assert image.href == (
        "https://xn--tqqy7y.example.cn/%E5%9B%BE%E7%89%87/%E5%AE%9D%E5%B1%B1%E6%B1%87.png?"
        "%E8%AF%B4%E6%98%8E=%E5%B0%81%E9%9D%A2"
    )
    assert Image(href="https://media.example.cn/a%20b.png").href == "https://media.example.cn/a%20b.png"


# ------------------------------------------------------------------------------------------ content hash


def test_content_hash_ignores_key_order_whitespace_and_offsets() -> None:
    base = {
        "id": "cms-1",
        "headline": HEADLINE,
        "summary": LEAD,
        "published_at": "2019-09-18T10:00:00+08:00",
        "tags": ["上海", "融媒体"],
        "images": [{"href": "https://media.example.cn/a.png", "caption": CAPTION}],
    }
    reference = Story.from_dict(base).content_hash
    assert len(reference) == 64 and int(reference, 16) >= 0

    reordered = dict(reversed(list(base.items())))
    assert Story.from_dict(reordered).content_hash == reference

    padded = {
        **base,
        "headline": f"  {HEADLINE}\n",
        "images": [{"href": base["images"][0]["href"], "caption": f"{CAPTION} "}],
    }
    assert Story.from_dict(padded).content_hash == reference

    utc = {**base, "published_at": "2019-09-18T02:00:00Z"}
    assert Story.from_dict(utc).content_hash == reference

    bookkeeping = {**base, "version": 7, "updated_at": "2019-09-19T00:00:00Z"}
    assert Story.from_dict(bookkeeping).content_hash == reference

    decomposed = Story.from_dict({**base, "summary": "Caf\u0065\u0301"}).content_hash
    assert decomposed == Story.from_dict({**base, "summary": "Caf\u00e9"}).content_hash


@pytest.mark.parametrize(
    "change",
    [
        {"body_html": f"<p>{LEAD}。</p>"},
        {"published_at": "2019-09-18T10:00:01+08:00"},
        {"tags": ["融媒体", "上海"]},
        {"pubstatus": "withheld"},
        {"targets": []},
        {"images": [{"href": "https://media.example.cn/a.png", "caption": CAPTION, "role": "cover"}]},
    ],
)
def test_content_hash_changes_with_content(change: dict[str, Any]) -> None:
    base = {
        "id": "cms-1",
        "headline": HEADLINE,
        "body_html": f"<p>{LEAD}</p>",
        "published_at": "2019-09-18T10:00:00+08:00",
        "tags": ["上海", "融媒体"],
        "images": [{"href": "https://media.example.cn/a.png", "caption": CAPTION}],
    }
    assert Story.from_dict({**base, **change}).content_hash != Story.from_dict(base).content_hash


# --- text XML 1.0 cannot carry ---------------------------------------------------------------------------------


def _text_paths(model: type[Any], prefix: str, sample: dict[str, Any]) -> list[tuple[str, Any]]:
    """(path, document with a control character at that path) for every text field the model declares."""
    import typing

    from pydantic import BaseModel

    out: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        if field.exclude or typing.get_origin(field.annotation) in (list, dict):
            continue  # containers: the cases below
        args = typing.get_args(field.annotation) or (field.annotation,)
        text_like = any(
            a is str or (typing.get_origin(a) is typing.Annotated and typing.get_args(a)[0] is str) for a in args
        )
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if text_like and name != "id":
            out.append((f"{prefix}{name}", {**sample, name: "坏\x01字"}))
        for inner in nested:
            for path, doc in _text_paths(inner, f"{prefix}{name}.", {}):
                out.append((path, {**sample, name: doc}))
    return out


def test_every_text_field_of_the_model_refuses_what_xml_cannot_carry() -> None:
    from syndicate.story import Image, StoryValidationError

    base = {"id": "x-1", "headline": "标题"}
    cases = _text_paths(Story, "", base)
    assert {"headline", "summary", "body_html", "by", "subheadline", "section"} <= {p for p, _ in cases}
    for path, document in cases:
        with pytest.raises(StoryValidationError) as caught:
            Story.from_dict(document)
        [error] = caught.value.errors
        assert error.path == path
        if path not in ("language", "url"):  # those two have stricter rules of their own, which speak first
            assert error.problem == "contains U+0001 at position 1, a character XML 1.0 cannot carry", path
    # Lists, nested models and keys are walked too.
    image = {"href": "https://news.example.cn/a.png"}
    for document, path in [
        ({**base, "tags": ["好", "坏\x1f"]}, "tags[1]"),
        ({**base, "images": [image, {**image, "caption": "\ufffe"}]}, "images[1].caption"),
        ({**base, "images": [{**image, "alt": "\uffff"}]}, "images[0].alt"),
        ({**base, "overrides": {"web": {"headline": "\x00"}}}, "overrides.web.headline"),
        ({**base, "targets": ["web\x02"]}, "targets[0]"),
    ]:
        with pytest.raises(StoryValidationError) as caught:
            Story.from_dict(document)
        assert [e.path for e in caught.value.errors] == [path]
    assert Image.model_fields  # the walk reads declared fields, so a new one is covered without a change here
    # Tab, line feed and carriage return are XML characters: accepted.
    assert Story.from_dict({**base, "body_html": "<p>a\tb\r\nc</p>"}).body_html == "<p>a\tb\r\nc</p>"


def test_ninjs_names_the_ninjs_field_carrying_a_control_character() -> None:
    from syndicate.story import StoryValidationError

    with pytest.raises(StoryValidationError) as caught:
        from_ninjs({"uri": "urn:x:1", "headlines": [{"role": "main", "value": "坏\x07"}]})
    assert [e.path for e in caught.value.errors] == ["headlines[0].value"]
