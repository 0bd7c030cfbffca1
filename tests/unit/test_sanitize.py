"""The shared sanitiser: nothing executable survives, the text and images do."""

from __future__ import annotations

from syndicate.sanitize import Block, clean_html, html_blocks, plain_text

HOSTILE = (
    '<p onclick="steal()">宝山汇<script>alert(1)</script> <a href="javascript:alert(2)">link</a>'
    ' <a href="https://news.example.cn/a">ok</a></p>'
    '<img src="x" onerror="alert(3)"><iframe src="https://evil.example"></iframe>'
    '<svg onload="alert(4)"><a href="JaVaScRiPt:alert(5)">x</a></svg>'
    '<style>body{display:none}</style><!-- comment --><p style="color:red">红</p>'
)


def test_nothing_executable_survives() -> None:
    cleaned = clean_html(HOSTILE).lower()
    for needle in (
        "<script",
        "onclick",
        "onerror",
        "onload",
        "javascript:",
        "<iframe",
        "<svg",
        "<style",
        "style=",
        "<!--",
    ):
        assert needle not in cleaned, needle
    assert "宝山汇" in cleaned and "红" in cleaned
    assert '<a href="https://news.example.cn/a" rel="noopener noreferrer">ok</a>' in clean_html(HOSTILE)


def test_plain_text_keeps_block_boundaries() -> None:
    assert plain_text("<p>第一段</p><p>第二段<br>续</p><h2>小标题</h2>") == "第一段 第二段 续 小标题"
    assert plain_text(HOSTILE).startswith("宝山汇 link ok")
    assert "alert" not in plain_text(HOSTILE)


def test_blocks_for_clients_that_lay_out_text() -> None:
    blocks = html_blocks(
        "<p>导语</p><figure><img src='https://img.example/a.png' alt='现场'><figcaption>主办方供图</figcaption>"
        "</figure><h2>小标题</h2><ul><li>一</li><li>二</li></ul><p onclick='x'>尾<script>x()</script></p>"
    )
    assert blocks == [
        Block("paragraph", text="导语"),
        Block("image", src="https://img.example/a.png", alt="现场", caption="主办方供图"),
        Block("heading", text="小标题"),
        Block("paragraph", text="一"),
        Block("paragraph", text="二"),
        Block("paragraph", text="尾"),
    ]
