"""Post-text counting (X's twitter-text conformance cases, Weibo's rule) and fitting (boundaries, URLs, graphemes)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import yaml

from adapters.textfit import (
    ELLIPSIS,
    WEIBO_COUNTER,
    X_COUNTER,
    FitError,
    TextCounter,
    fit_post,
    grapheme_boundaries,
    same_post_text,
    weibo_length,
    weibo_url_spans,
    x_hashtag,
    x_is_valid,
    x_weighted_length,
)
from syndicate.ninjs import read_document
from syndicate.story import Story
from tests.support import REPO, sample_stories, shared_path

#: The sections of twitter-text's validate.yml that describe what X counts today (config v3).
CONFORMANCE_SECTIONS = ("WeightedTweetsWithDiscountedEmojiCounterTest", "UnicodeDirectionalMarkerCounterTest")


def conformance_cases() -> list[tuple[str, dict[str, Any]]]:
    data = yaml.safe_load(shared_path("standards", "twitter-text-validate.yml").read_text("utf-8"))
    return [(section, case) for section in CONFORMANCE_SECTIONS for case in data["tests"][section]]


def test_x_weighted_length_passes_every_twitter_text_conformance_case() -> None:
    cases = conformance_cases()
    assert len(cases) >= 24  # 22 + 2 in the file this was written against: a section that vanished would fail
    failures = [
        f"{section}: {case['description']}: got {(x_weighted_length(case['text']), x_is_valid(case['text']))}, "
        f"expected {(case['expected']['weightedLength'], case['expected']['valid'])}"
        for section, case in cases
        if (x_weighted_length(case["text"]), x_is_valid(case["text"]))
        != (case["expected"]["weightedLength"], case["expected"]["valid"])
    ]
    assert failures == []


def test_x_counting_rules_in_brief() -> None:
    assert x_weighted_length("a" * 280) == 280 and x_is_valid("a" * 280) and not x_is_valid("a" * 281)
    assert x_weighted_length("中" * 140) == 280 and not x_is_valid("中" * 141)
    assert x_weighted_length("https://news.example.cn/a/very/long/path/" + "x" * 80) == 23
    assert x_weighted_length("👨‍👩‍👧‍👦") == 2  # one emoji sequence
    assert x_weighted_length("\u2018quoted\u2019") == 8  # 8216/8217 are in the weight-1 ranges


def test_weibo_counting_follows_weibos_documented_rule() -> None:
    # 140 Chinese characters; two half-width characters count as one, rounded up.
    assert weibo_length("中" * 140) == 140
    assert weibo_length("ab") == 1 and weibo_length("abc") == 2 and weibo_length("a") == 1
    assert weibo_length("a" * 280) == 140 and weibo_length("a" * 281) == 141
    assert weibo_length("上海 Shanghai") == 2 + 5  # 2 + ceil(9 half-width / 2)
    assert weibo_length("é") == 1 and weibo_length("ā") == 1  # U+00E9 is half-width, U+0101 is not
    assert weibo_length("😀") == 2  # outside the BMP
    # Every link is a 20-character t.cn short link: 10, however long it was.
    long_link = "https://news.example.cn/shanghai/2019/09/sh-rmt-20190918-001.html"
    assert weibo_length(long_link) == 10 and weibo_length("http://a.cn") == 10
    assert weibo_length(f"看 {long_link} 了") == 1 + 10 + 1 + 1  # 看 + " " (half) + link + " " (half) + 了
    assert weibo_url_spans(f"看{long_link} 了") == [(1, 1 + len(long_link))]


def test_x_hashtags_drop_what_a_hashtag_cannot_hold() -> None:
    assert x_hashtag("融媒体") == "#融媒体"
    assert x_hashtag("Baoshan Hui") == "#BaoshanHui"
    assert x_hashtag("C-919!") == "#C919"
    assert x_hashtag("2019") is None and x_hashtag("!!") is None


def test_grapheme_boundaries_keep_clusters_whole() -> None:
    text = "a👨‍👩‍👧e\u0301🇨🇳中"
    assert grapheme_boundaries(text) == [0, 1, 6, 8, 10, 11]


# ------------------------------------------------------------------------------------------------ fitting


def example(name: str) -> Story:
    return read_document(json.loads((REPO / "examples" / name).read_text("utf-8")))


LONG_ZH_SUMMARY = (
    "截至目前,上海分两批、共16个区级融媒体中心已全部建成并挂牌,同时,各区融媒体客户端集体入驻人民号、上观号。"
    "这一进度比原定实施方案提前半个月完成了任务目标,进一步壮大了主流舆论声音。这也标志着上海各区新闻媒体告别传统"
    "单兵作战模式,实现新闻采编和信息发布的资源整合,媒体融合发展开启新征程。"
)
EN_SUMMARY = (
    "All sixteen district-level media centres in Shanghai are now open. The Baoshan centre launched its first "
    "product, the Baoshan Hui app, on September 18, two weeks ahead of the plan the city set in April. Residents "
    "can use it for news, government services and local information, from schools to traffic."
)
URL = "https://news.example.cn/shanghai/2019/09/sh-rmt-20190918-001.html"


def test_chinese_story_fits_weibo_cut_at_a_sentence_with_an_ellipsis() -> None:
    post = fit_post(
        WEIBO_COUNTER,
        headline="上海16区融媒体中心全部建成并挂牌",
        summary=LONG_ZH_SUMMARY,
        url=URL,
        tags=["融媒体"],
        language="zh-CN",
    )
    assert post.text == (
        "【上海16区融媒体中心全部建成并挂牌】截至目前,上海分两批、共16个区级融媒体中心已全部建成并挂牌,同时,"
        "各区融媒体客户端集体入驻人民号、上观号。这一进度比原定实施方案提前半个月完成了任务目标,进一步壮大了主流舆论"
        f"声音{ELLIPSIS} {URL}"
    )
    assert post.length == weibo_length(post.text) <= 140
    assert post.hashtags == ()
    assert any("summary cut at a sentence boundary" in w and "这也标志着" in w for w in post.warnings)
    assert any("#topic#" in w for w in post.warnings)


def test_english_story_fits_x_with_hashtags_while_they_fit() -> None:
    post = fit_post(
        X_COUNTER,
        headline="Shanghai opens the last of its 16 district media centres",
        summary=EN_SUMMARY,
        url="https://news.example.cn/en/2019/09/media-centres.html",
        tags=["media", "Shanghai", "Baoshan Hui", "district media centres in Shanghai"],
        language="en",
    )
    assert post.text.startswith("Shanghai opens the last of its 16 district media centres: All sixteen")
    assert f"on September 18{ELLIPSIS} https://news.example.cn/en/2019/09/media-centres.html #media" in post.text
    assert post.hashtags == ("#media", "#Shanghai", "#BaoshanHui")
    assert post.length == x_weighted_length(post.text) <= 280 and x_is_valid(post.text)
    assert any("#districtmediacentresinShanghai" in w for w in post.warnings)


def test_mixed_chinese_english_story_fits_both() -> None:
    headline = "“宝山汇”APP上线 Baoshan Hui app goes live with news, services and KNEWS content"
    summary = (
        "宝山区融媒体中心推出综合性App“宝山汇”,以“新闻+政务+服务+互动”为定位。The app brings together the "
        "district's radio, TV, newspaper and websites, and partners with KNEWS, Xinhua and The Paper. "
        "市民可以在App上办事、看新闻、听广播。"
    )
    for counter in (X_COUNTER, WEIBO_COUNTER):
        post = fit_post(counter, headline=headline, summary=summary, url=URL, tags=["宝山汇", "KNEWS"], language="zh")
        assert post.length == counter.length(post.text) <= counter.limit
        assert post.text.startswith("【“宝山汇”APP上线 Baoshan Hui app goes live")
        assert post.text.endswith(URL) or f"{URL} #" in post.text
        assert post.warnings  # something was trimmed, and it says what


def test_examples_fit_both_channels_unchanged_when_they_fit() -> None:
    story = example("01-district-media-centres.json")
    x = fit_post(X_COUNTER, headline=story.headline, summary=story.summary, url=story.url, tags=story.tags)
    assert x.text == f"【{story.headline}】{story.summary} {story.url} #融媒体 #宝山汇 #上海"
    assert x.warnings == () and x.length == 209
    weibo = fit_post(WEIBO_COUNTER, headline=story.headline, summary=story.summary, url=story.url, language="zh-CN")
    assert weibo.text == f"【{story.headline}】{story.summary} {story.url}" and weibo.length == 93


def test_never_cuts_inside_a_url_or_a_grapheme_cluster() -> None:
    inner_url = "https://example.org/" + "p" * 40
    summary = "Read the report at " + inner_url + " for details " + "👨‍👩‍👧 " * 120
    for counter in (X_COUNTER, WEIBO_COUNTER):
        post = fit_post(counter, headline="Report", summary=summary, url=URL, language="en")
        lead = post.text[: -len(URL) - 1]
        assert lead.endswith(ELLIPSIS) and post.length <= counter.limit
        body = lead[: -len(ELLIPSIS)]
        assert inner_url in body or "example.org" not in body  # the inner link is whole or absent
        assert not body.endswith("\u200d") and body.count("👨") == body.count("👧")
    # A long run of flags is cut between flags, never between the two regional indicators of one flag.
    post = fit_post(X_COUNTER, headline="旗", summary="🇨🇳" * 300, url=URL, language="zh")
    flags = post.text.split("】")[1].split(ELLIPSIS)[0]
    assert len(flags) % 2 == 0 and set(flags) == {"🇨", "🇳"}


def test_latin_text_is_cut_at_a_word_not_inside_one() -> None:
    summary = " ".join(["extraordinarily"] * 40)
    post = fit_post(X_COUNTER, headline="Words", summary=summary, url=URL, language="en")
    lead = post.text.split(f"{ELLIPSIS} ")[0]
    assert lead.endswith("extraordinarily") and post.length <= 280


def test_override_text_replaces_headline_and_summary() -> None:
    post = fit_post(X_COUNTER, headline="H", summary="S", text="专门为X写的文字 " * 40, url=URL)
    assert post.text.startswith("专门为X写的文字") and "H" not in post.text.split(URL)[0]
    assert post.length <= 280 and "the channel's text override cut" in post.warnings[0]


def test_summary_is_left_out_rather_than_cut_to_a_stub() -> None:
    headline = "上海" * 60  # 120 of Weibo's 140, with the 10 of the link: room for no real summary
    post = fit_post(WEIBO_COUNTER, headline=headline, summary="截至目前,上海16个区级融媒体中心已全部建成。", url=URL)
    assert post.text == f"{headline} {URL}"
    assert any(w.startswith("summary left out") for w in post.warnings)


def test_an_over_long_headline_is_cut_and_an_impossible_post_raises() -> None:
    post = fit_post(WEIBO_COUNTER, headline="长" * 300, summary="摘要", url=URL)
    assert post.length == 140 and post.text.endswith(f"{ELLIPSIS} {URL}")
    assert any(w.startswith("headline cut") for w in post.warnings)
    with pytest.raises(FitError, match="url"):
        fit_post(WEIBO_COUNTER, headline="标题", url="https://news.example.cn/" + "x" * 400)


def test_fitting_is_deterministic() -> None:
    args: dict[str, Any] = {"headline": "上海16区融媒体中心", "summary": LONG_ZH_SUMMARY * 2, "url": URL, "tags": ["a"]}
    assert fit_post(X_COUNTER, **args) == fit_post(X_COUNTER, **args)


def test_same_post_text_compares_links_as_short_links() -> None:
    ours = f"【标题】摘要 {URL}"
    assert same_post_text(ours, "【标题】摘要 http://t.cn/A6xYz123", WEIBO_COUNTER.url_spans)
    assert same_post_text(ours, "【标题】摘要 https://t.co/abc", X_COUNTER.url_spans)
    assert not same_post_text(ours, "【标题】别的 http://t.cn/A6xYz123", WEIBO_COUNTER.url_spans)


def _counting(counter: TextCounter) -> tuple[TextCounter, list[int]]:
    """``counter`` with every text it is asked to count recorded by length."""
    counted: list[int] = []

    def length(text: str) -> int:
        counted.append(len(text))
        return counter.length(text)

    return dataclasses.replace(counter, length=length), counted


@pytest.mark.parametrize("counter", [X_COUNTER, WEIBO_COUNTER], ids=["x", "weibo"])
@pytest.mark.parametrize("language", ["zh-CN", "en"])
def test_fitting_counts_about_what_fits_not_the_whole_text(counter: TextCounter, language: str) -> None:
    """Issue 15 item 3: twitter-text's count is quadratic on long CJK runs (a 5,000-character summary took seconds
    to count, and the fitter counted it a dozen times). What the fitter counts is bounded by what fits: the same
    for a summary of 5,000 characters as of 1,000, and a headline at its 1,000-character bound costs no more."""
    sentence = "宝山、闵行两个区级融媒体中心正式挂牌，" if language == "zh-CN" else "The centre opened on Monday. "
    totals = []
    for size in (1_000, 5_000):
        measured, counted = _counting(counter)
        post = fit_post(
            measured,
            headline=("上海16区融媒体中心全部建成" if language == "zh-CN" else "All 16 centres are open") * 80,
            summary=(sentence * 300)[:size],
            url="https://news.example.cn/shanghai/2026/12/story.html",
            tags=[f"tag{i}" for i in range(50)],
            language=language,
        )
        assert post.length <= counter.limit and post.trimmed
        totals.append(sum(counted))
        assert max(counted) <= 8 * counter.limit, counted  # no count of the whole text
    assert totals[1] <= totals[0] * 1.2, totals


def test_counting_the_lead_apart_from_the_link_gives_the_posts_an_exact_count_gives() -> None:
    """X's fitter counts the lead without the link while it searches (``tail_adds_up``) and checks the whole post
    after: on the sample stories and on texts at the limits, the posts are the ones the exact search finds."""
    from adapters.textfit import _fit

    leads = [
        (s.headline, s.summary or "", s.tags, s.language, s.url or "https://news.example.cn/a.html")
        for s in sample_stories()
    ]
    leads += [
        (
            "上海16区融媒体中心全部建成" * 30,
            "宝山、闵行两个区级融媒体中心正式挂牌。" * 40,
            ["融媒体"],
            "zh-CN",
            "https://a.cn/x.html",
        ),
        (
            "Breaking: the centre opened",
            "The district media centre opened on Monday. " * 20,
            ["news"],
            "en",
            "http://t.co",
        ),
        ("短讯 👨‍👩‍👧 家庭", "ｆｕｌｌ　ｗｉｄｔｈ and é́ combining, 3.5% rise." * 12, [], "zh-CN", "https://b.cn/1"),
    ]
    for headline, summary, tags, language, url in leads:
        kw = {"tags": tags, "language": language}
        split = _fit(X_COUNTER, headline, summary, "", url, **kw, split_tail=True)
        exact = _fit(X_COUNTER, headline, summary, "", url, **kw, split_tail=False)
        assert split == exact, (headline[:20], split.text, exact.text)
