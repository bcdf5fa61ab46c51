"""Link rewriting and the open pixel: skip rules, entities, quoting, odd markup."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from kannon.envelope.tokens import verify_click, verify_open
from kannon.envelope.tracking import (
    apply_tracking,
    insert_open_pixel,
    rewrite_links,
    tracker_base,
)
from tests.envelope.envelope_testdata import BATCH_ID, NOW, TRACKING_KEY

KEYS = {TRACKING_KEY.kid: TRACKING_KEY.secret}
BASE = "https://stats.k.example.com"


def fake_track(url: str) -> str:
    return f"T[{url}]"


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<a href="https://x.test/">x</a>', '<a href="T[https://x.test/]">x</a>'),
        ("<a href='https://x.test/'>x</a>", "<a href='T[https://x.test/]'>x</a>"),
        ("<a href=https://x.test/a>x</a>", "<a href=T[https://x.test/a]>x</a>"),
        ('<A HREF="https://x.test/">x</A>', '<A HREF="T[https://x.test/]">x</A>'),
        (
            '<a class="btn" title=\'a > b\' href="https://x.test/" target=_blank>x</a>',
            '<a class="btn" title=\'a > b\' href="T[https://x.test/]" target=_blank>x</a>',
        ),
        (
            '<a\n  style="color:red"\n  href = "https://x.test/"\n>x</a>',
            '<a\n  style="color:red"\n  href = "T[https://x.test/]"\n>x</a>',
        ),
        # surrounding whitespace is not part of the URL
        ('<a href="  https://x.test/  ">x</a>', '<a href="T[https://x.test/]">x</a>'),
        # relative and scheme-relative links are tracked too
        ('<a href="//x.test/p">x</a>', '<a href="T[//x.test/p]">x</a>'),
        # first href wins, as in browsers
        (
            '<a href="https://a.test" href="https://b.test">x</a>',
            '<a href="T[https://a.test]" href="https://b.test">x</a>',
        ),
    ],
)
def test_rewrites(html: str, expected: str) -> None:
    assert rewrite_links(html, fake_track) == expected


@pytest.mark.parametrize(
    ("href", "url"),
    [
        ("https://x.test/?a=1&amp;b=2", "https://x.test/?a=1&b=2"),
        ("https://x.test/?q=&#x27;&quot;&lt;", "https://x.test/?q='\"<"),
        ("https://x.test/?a=1&b=2", "https://x.test/?a=1&b=2"),  # bare "&" stays
    ],
)
def test_entities_are_decoded_before_signing(href: str, url: str) -> None:
    seen: list[str] = []

    def track(u: str) -> str:
        seen.append(u)
        return "https://s/c/tok?x=1&y=2"

    out = rewrite_links(f'<a href="{href}">x</a>', track)
    assert seen == [url]
    # what goes back into the attribute is escaped again
    assert out == '<a href="https://s/c/tok?x=1&amp;y=2">x</a>'


@pytest.mark.parametrize(
    "html",
    [
        '<a href="mailto:a@b.c">m</a>',
        '<a href="MAILTO:a@b.c">m</a>',
        '<a href="tel:+390612345">t</a>',
        '<a href="sms:+390612345">s</a>',
        '<a href="javascript:void(0)">j</a>',
        '<a href="#top">anchor</a>',
        '<a href="">empty</a>',
        '<a href="   ">blank</a>',
        "<a href>bare</a>",
        '<a name="top">no href</a>',
        '<img src="https://x.test/logo.png">',
        '<abbr title="x">a</abbr><area href="https://x.test/">',
        '<link href="https://x.test/style.css">',
        "<p>no links</p>",
    ],
)
def test_left_as_authored(html: str) -> None:
    assert rewrite_links(html, fake_track) == html


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<a data-no-track href="https://x.test/">x</a>', '<a href="https://x.test/">x</a>'),
        ('<a href="https://x.test/" data-no-track>x</a>', '<a href="https://x.test/">x</a>'),
        ('<a href="https://x.test/" DATA-NO-TRACK="true">x</a>', '<a href="https://x.test/">x</a>'),
        (
            "<a\n data-no-track='1'\n href='https://x.test/'>x</a>",
            "<a\n href='https://x.test/'>x</a>",
        ),
    ],
)
def test_data_no_track_is_respected_and_stripped(html: str, expected: str) -> None:
    assert rewrite_links(html, fake_track) == expected


def test_many_links_each_rewritten_once() -> None:
    html = "".join(f'<p><a href="https://x.test/{i}">{i}</a></p>\n' for i in range(10))
    out = rewrite_links(html, fake_track)
    assert out.count("T[") == 10
    assert out.count("T[https://x.test/3]") == 1


def test_unreadable_tag_is_left_alone() -> None:
    html = '<a href="https://x.test/ title=oops>x</a><p>rest</p>'
    assert rewrite_links(html, fake_track) == html


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<html><body><p>x</p></body></html>", "<html><body><p>x</p>PIXEL</body></html>"),
        ("<BODY>x</BODY>", "<BODY>xPIXEL</BODY>"),
        ("<body>x</body >", "<body>xPIXEL</body >"),
        ("<body>x</body>\n<!-- </body> -->", "<body>xPIXEL</body>\n<!-- </body> -->"),
        ("<p>fragment</p>", "<p>fragment</p>PIXEL"),
        ("", "PIXEL"),
    ],
)
def test_pixel_position(html: str, expected: str) -> None:
    pixel = '<img src="https://s/o/t" width="1" height="1" alt="" style="display:none"/>'
    assert insert_open_pixel(html, "https://s/o/t") == expected.replace("PIXEL", pixel)


def test_tracker_base() -> None:
    assert tracker_base("https://stats.{domain}/", "k.example.com") == BASE
    assert tracker_base("http://127.0.0.1:8080", "k.example.com") == "http://127.0.0.1:8080"


def test_apply_tracking_signs_verifiable_tokens() -> None:
    html = (
        '<html><body><a href="https://shop.test/?a=1&amp;b=2">buy</a>'
        '<a href="mailto:help@shop.test">help</a>'
        '<a href="https://shop.test/?a=1&amp;b=2">again</a></body></html>'
    )
    out = apply_tracking(
        html,
        base_url=BASE,
        key=TRACKING_KEY,
        batch_id=BATCH_ID,
        recipient="bob@example.org",
        expires_at=NOW + timedelta(days=1),
    )
    clicks = re.findall(re.escape(BASE) + r"/c/([A-Za-z0-9_-]+)", out)
    opens = re.findall(re.escape(BASE) + r"/o/([A-Za-z0-9_-]+)", out)
    assert len(clicks) == 2 and clicks[0] == clicks[1]  # same link, same token
    assert len(opens) == 1
    claim = verify_click(clicks[0], KEYS, NOW)
    assert claim is not None
    assert claim.url == "https://shop.test/?a=1&b=2"
    assert claim.recipient == "bob@example.org" and claim.batch_id == BATCH_ID
    assert verify_open(opens[0], KEYS, NOW) is not None
    assert 'href="mailto:help@shop.test"' in out
    assert out.index("/o/") < out.index("</body>")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "hostile",
    [
        "<a " * 200_000,  # quadratic before "<" was excluded from attribute names
        '<a x="' * 100_000,
        "<a x='<a y='" * 50_000,
        "<a " + 'x="1" ' * 100_000,
        "<a" + " " * 200_000 + ">",  # quadratic when attributes were found by searching
    ],
)
def test_hostile_markup_is_linear(hostile: str) -> None:
    # Linear: well under a second. Quadratic (the regression): hours, caught by the timeout.
    assert rewrite_links(hostile, fake_track) == hostile
