"""The bounce parser on hostile input: time linear in the message, input capped, no exception.

Anyone who ever got mail from Kannon can send a report to a valid bounce address, so the parser
reads attacker-controlled bytes. Each shape below once took seconds to minutes per megabyte (a
pattern rescanning the rest of the text from every position); the bound asserted here is loose
(the measured time is ~0.2 s at most on a 2-core machine) but far below the quadratic times.
"""

from __future__ import annotations

import time

import pytest

from kannon.dsn import parse_message
from kannon.dsn.address import all_addresses
from kannon.dsn.mime import html_to_text

MB = 1_000_000
# Generous: the machine is shared with other test runs. Quadratic behaviour takes 10-1000x this.
BOUND = 2.0

HEAD = (
    "From: MAILER-DAEMON@mx.far.example\r\nTo: bump_x@k.example.com\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
)
PREAMBLE = "Your message could not be delivered to stranger@far.example.\r\n\r\n"


def _message(content_type: str, body: str) -> bytes:
    return f"{HEAD}Content-Type: {content_type}; charset=utf-8\r\n\r\n{PREAMBLE}{body}".encode()


def _timed(raw: bytes) -> float:
    started = time.perf_counter()
    parse_message(raw)
    return time.perf_counter() - started


# Units repeated to a megabyte, each one a shape that used to be quadratic somewhere.
SHAPES = [
    "<script",  # html: lazy .*?</script> to the end from every tag
    "<",  # html: <[^>]+> to the end from every "<"
    "<!--",
    "&#",
    "x",  # one long word: \S+@\S+ from every position
    "!",  # address characters: the address pattern 128 characters ahead from each
    "\n",  # blank lines: ^\s* crossing all the following lines
    " \n",
    "-",  # bullets given back one by one to the address pattern
    "a.",
]


@pytest.mark.parametrize("content_type", ["text/plain", "text/html"])
@pytest.mark.parametrize("unit", SHAPES, ids=[repr(s) for s in SHAPES])
def test_a_megabyte_of_hostile_text_parses_in_bounded_time(content_type: str, unit: str) -> None:
    raw = _message(content_type, unit * (MB // len(unit)))
    assert _timed(raw) < BOUND


def test_a_hostile_delivery_status_part_parses_in_bounded_time() -> None:
    boundary = "b"
    raw = (
        f"{HEAD}Content-Type: multipart/report; report-type=delivery-status; "
        f'boundary="{boundary}"\r\n\r\n--{boundary}\r\nContent-Type: message/delivery-status'
        "\r\n\r\n" + "x\r\n\r\n" * (MB // 5)
    ).encode()
    assert _timed(raw) < BOUND


def test_a_long_message_is_read_up_to_the_cap_and_says_so() -> None:
    dsn = (
        f"{HEAD}Content-Type: multipart/report; report-type=delivery-status; "
        'boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n'
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        "Final-Recipient: rfc822; reader@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\n"
    )
    raw = (dsn + "returned body line\r\n" * (MB // 20) + "--b--\r\n").encode()
    report = parse_message(raw)
    assert [(r.recipient, r.status, r.reason) for r in report.recipients] == [
        ("reader@example.org", "5.1.1", "userunknown")
    ]
    assert any("truncated" in note for note in report.notes)
    assert not any("truncated" in note for note in parse_message(dsn.encode()).notes)


def test_address_scan_is_linear_in_runs_of_address_characters() -> None:
    text = ("!" * 998 + "\r\n") * (MB // 1000) + " found@far.example "
    started = time.perf_counter()
    assert all_addresses(text) == ["found@far.example"]
    assert time.perf_counter() - started < BOUND / 4


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        ("<p>Delivery to <b>a@b.example</b> failed</p>", "Delivery to a@b.example failed\n"),
        ("line one<br>line two<br/>three<BR class=x>four", "line one\nline two\nthree\nfour"),
        ("<div>a</div><div>b</div>", "a\nb\n"),
        ("<script>if (a < b) alert('</p>')</script>visible", "visible"),
        ("<STYLE type=text/css>p { color: red }</STYLE>visible", "visible"),
        ("<!-- a comment <p> -->visible", "visible"),
        ("<!DOCTYPE html><?xml x?>visible", "visible"),
        ("a < b and c > d", "a < b and c > d"),
        ("&lt;a@b.example&gt; &amp; &#65;&#x42; &nbsp;", "<a@b.example> & AB \xa0"),
        ("&#" + "9" * 5000 + ";", "\ufffd" + "9" * 4990 + ";"),
        ("visible<a href='x'", "visible"),
        ("visible<script>never closed", "visible"),
        ("visible<!-- never closed", "visible"),
    ],
    ids=[
        "inline",
        "line breaks",
        "blocks",
        "script",
        "style",
        "comment",
        "declarations",
        "lone angle brackets",
        "entities",
        "huge character reference",
        "open tag",
        "open script",
        "open comment",
    ],
)
def test_html_to_text(markup: str, text: str) -> None:
    assert html_to_text(markup) == text
