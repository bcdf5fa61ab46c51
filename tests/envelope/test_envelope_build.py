"""build_envelope: headers, MIME structure, attachments, overrides, limits, determinism, DKIM."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import format_datetime

import pytest

from kannon.envelope import (
    BatchSpec,
    DkimSigner,
    Envelope,
    RecipientPart,
    build_envelope,
    parse_bounce_address,
    parse_email_id,
    verify_click,
    verify_open,
)
from tests.envelope.envelope_testdata import BATCH_ID, BOUNCE_SECRET, NOW, TRACKING_KEY
from tests.support import parse_message

MakeSpec = Callable[..., tuple[BatchSpec, RecipientPart, DkimSigner]]
KEYS = {TRACKING_KEY.kid: TRACKING_KEY.secret}


def parse(env: Envelope) -> EmailMessage:
    return parse_message(env.body)


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def assert_wire_clean(raw: bytes) -> None:
    """CRLF only, no line over 998 octets (RFC 5322 §2.1.1, §2.3)."""
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert raw.endswith(b"\r\n")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_headers(make_spec: MakeSpec, dkim_verify: Callable[[bytes], bool]) -> None:
    env = build_envelope(*make_spec())
    msg = parse(env)
    assert msg["From"] == "Kannon News <news@k.example.com>"
    assert msg["To"] == "bob@example.org"
    assert msg["Cc"] is None
    assert msg["Subject"] == "Hello Bob"
    assert msg["Date"] == format_datetime(NOW)
    assert msg["Message-ID"] == env.email_id
    assert msg["MIME-Version"] == "1.0"
    assert msg["X-Pool-Message-ID"] == BATCH_ID
    assert msg["X-Mailer"] == "Kannon"
    assert msg["Reply-To"] is None and msg["Return-Path"] is None
    assert msg.get_content_type() == "text/html"
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert next(iter(msg.keys())) == "DKIM-Signature"
    assert_wire_clean(env.body)
    assert dkim_verify(env.body)


def test_envelope_fields(make_spec: MakeSpec) -> None:
    env = build_envelope(*make_spec(should_retry=False))
    assert parse_email_id(env.email_id) == ("bob@example.org", BATCH_ID)
    assert env.sender == "news@k.example.com"
    assert env.recipient == "bob@example.org"
    assert env.should_retry is False
    bounce = parse_bounce_address(env.return_path, BOUNCE_SECRET)
    assert bounce is not None and bounce.batch_id == BATCH_ID
    assert bounce.matches("bob@example.org", BOUNCE_SECRET)


def test_fields_rendered_escaped_in_html_raw_in_subject(make_spec: MakeSpec) -> None:
    env = build_envelope(
        *make_spec(
            subject="Deal for {{ name }} — {{ unknown }}",
            html="<p>{{ name }} / {{{ name }}}</p>",
            fields={"name": "Tom & <Jerry>"},
        )
    )
    msg = parse(env)
    assert msg["Subject"] == "Deal for Tom & <Jerry> — {{ unknown }}"
    assert "<p>Tom &amp; &lt;Jerry&gt; / Tom & <Jerry></p>" in html_of(msg)


def test_tracking_links_and_pixel(make_spec: MakeSpec) -> None:
    html = (
        '<html><body><a href="https://shop.test/a?x=1&amp;y=2">a</a>'
        '<a href="mailto:help@shop.test">m</a></body></html>'
    )
    body = html_of(parse(build_envelope(*make_spec(html=html))))
    clicks = re.findall(r'href="https://stats\.k\.example\.com/c/([\w-]+)"', body)
    opens = re.findall(r'src="https://stats\.k\.example\.com/o/([\w-]+)"', body)
    assert len(clicks) == 1 and len(opens) == 1
    claim = verify_click(clicks[0], KEYS, NOW)
    assert claim is not None and claim.url == "https://shop.test/a?x=1&y=2"
    assert claim.recipient == "bob@example.org" and claim.batch_id == BATCH_ID
    assert verify_open(opens[0], KEYS, NOW) is not None
    assert 'href="mailto:help@shop.test"' in body
    assert body.index("/o/") < body.index("</body>")


def test_tracking_disabled(make_spec: MakeSpec) -> None:
    html = '<html><body><a href="https://shop.test/">a</a></body></html>'
    body = html_of(parse(build_envelope(*make_spec(html=html, tracker_base_url=None))))
    assert body.rstrip("\n") == html


def test_non_ascii_alias_and_subject(
    make_spec: MakeSpec, dkim_verify: Callable[[bytes], bool]
) -> None:
    env = build_envelope(
        *make_spec(
            sender_alias="Zoë's Bücher, 東京",
            subject="Ciao {{ name }} — il tuo ordine è pronto 🎉",
            fields={"name": "Jürgen"},
            html="<p>Grüße, {{ name }} — 東京</p>",
        )
    )
    head = env.body.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()  # RFC 2047 everywhere in the headers
    msg = parse(env)
    assert msg["Subject"] == "Ciao Jürgen — il tuo ordine è pronto 🎉"
    assert msg["From"].addresses[0].addr_spec == "news@k.example.com"
    assert "Grüße, Jürgen — 東京" in html_of(msg)
    assert dkim_verify(env.body)


def test_to_and_cc_override(make_spec: MakeSpec, dkim_verify: Callable[[bytes], bool]) -> None:
    env = build_envelope(
        *make_spec(
            headers_to=["team@example.org", "boss@example.org"],
            headers_cc=["audit@example.org"],
        )
    )
    msg = parse(env)
    assert msg["To"] == "team@example.org, boss@example.org"
    assert msg["Cc"] == "audit@example.org"
    assert env.recipient == "bob@example.org"  # RCPT TO stays the Delivery's Recipient
    assert dkim_verify(env.body)
    assert b"h=from:from:to:cc:subject:" in env.body.replace(b"\r\n\t", b"")


def test_attachments(make_spec: MakeSpec, dkim_verify: Callable[[bytes], bool]) -> None:
    every_byte = bytes(range(256)) * 40
    attachments = [
        ("report.pdf", b"%PDF-1.7\n" + every_byte),
        ("../../secret/ré sumé.docx", every_byte[::-1]),
        ("empty.txt", b""),
        ('no"ext', b"\x00\x01"),
    ]
    env = build_envelope(*make_spec(attachments=attachments))
    msg = parse(env)
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/html",
        "application/pdf",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "text/plain",
        "application/octet-stream",
    ]
    assert parts[0].get_content_disposition() == "inline"
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Hi Bob" in html_of(msg)
    for part, (_, data) in zip(parts[1:], attachments, strict=True):
        assert part.get_content_disposition() == "attachment"
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_payload(decode=True) == data
    assert [p.get_filename() for p in parts[1:]] == [
        "report.pdf",
        "ré sumé.docx",
        "empty.txt",
        "noext",
    ]
    assert_wire_clean(env.body)
    assert dkim_verify(env.body)


@pytest.mark.parametrize(
    "override",
    [
        {"subject": "Hi\r\nBcc: victim@example.org"},
        {"subject": "Hi {{ name }}", "fields": {"name": "x\nBcc: victim@example.org"}},
        {"sender_alias": "Evil\rBcc: x@y.z"},
        {"sender_email": "a@b.c\n"},
        {"recipient": "bob@example.org\r\nRCPT TO:<x@y.z>"},
        {"headers_to": ["ok@example.org", "x@y.z\nBcc: v@w.x"]},
        {"headers_cc": ["x@y.z\r"]},
        {"batch_id": "msg_abc@k.example.com\r\nX: y"},
    ],
)
def test_cr_lf_in_header_values_is_refused(
    make_spec: MakeSpec, override: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        build_envelope(*make_spec(**override))


def test_naive_now_is_refused(make_spec: MakeSpec) -> None:
    with pytest.raises(ValueError):
        build_envelope(*make_spec(now=NOW.replace(tzinfo=None)))


def test_limits_with_long_content(
    make_spec: MakeSpec, dkim_verify: Callable[[bytes], bool]
) -> None:
    env = build_envelope(
        *make_spec(
            html="<p>" + "word " * 20_000 + "</p>" + "x" * 5000,  # long lines, no newlines
            subject="Subject " * 40,
            headers_to=[f"person{i}@example{i}.org" for i in range(60)],
            recipient="r" * 64 + "@" + "d" * 180 + ".example",
            attachments=[("年度報告書" * 40 + ".pdf", b"x" * 100_000)],
        )
    )
    assert_wire_clean(env.body)
    head = env.body.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if not line.startswith((b"Message-ID", b"X-Pool")):
            assert len(line) <= 78, line
    msg = parse(env)
    assert msg["Subject"] == ("Subject " * 40)
    assert len(msg["To"].addresses) == 60
    assert dkim_verify(env.body)


def test_deterministic(make_spec: MakeSpec) -> None:
    spec = make_spec(attachments=[("a.txt", b"a")])
    assert build_envelope(*spec).body == build_envelope(*spec).body


def test_boundary_comes_from_seed(make_spec: MakeSpec) -> None:
    one = build_envelope(*make_spec(attachments=[("a.txt", b"a")], boundary_seed=b"one"))
    two = build_envelope(*make_spec(attachments=[("a.txt", b"a")], boundary_seed=b"two"))
    b1, b2 = parse(one).get_boundary(), parse(two).get_boundary()
    assert b1 and b2 and b1 != b2 and b1.startswith("=_")


def test_spec_repr_hides_secrets(make_spec: MakeSpec) -> None:
    text = repr(make_spec())
    assert repr(BOUNCE_SECRET) not in text
    assert repr(TRACKING_KEY.secret) not in text


@pytest.mark.parametrize(
    ("html", "attachments"),
    [
        ("<p>plain</p>", ()),
        ("", ()),  # empty body
        ("   \n\n\n", ()),  # blank lines only
        ("line  \t \n\tnext   \n\n\n", ()),  # trailing whitespace lines
        ("<p>ünïcödé 東京 🎉</p>\n", ()),
        ("", (("a.bin", b""),)),
        ("<p>with files</p>", (("a.pdf", b"%PDF"), ("b.txt", b"text  \r\n\r\n"))),
    ],
)
def test_dkim_verifies_for_every_body_shape(
    make_spec: MakeSpec,
    dkim_verify: Callable[[bytes], bool],
    html: str,
    attachments: tuple[tuple[str, bytes], ...],
) -> None:
    env = build_envelope(*make_spec(html=html, attachments=attachments, tracker_base_url=None))
    assert_wire_clean(env.body)
    assert dkim_verify(env.body)
    # and a body change is detected (blank lines at the end would not be: relaxed ignores them)
    assert not dkim_verify(env.body + b"appended\r\n")
