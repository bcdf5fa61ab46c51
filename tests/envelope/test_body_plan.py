"""The compiled Batch HTML (ADR 0056) builds the same bytes as the straightforward path.

The reference here is the code as it was before the compiled path: ``render_html`` then
``apply_tracking`` on the whole document, tokens from ``hmac.digest`` over the documented claim
layout, and ``binascii.b2a_qp`` with the From-line regex run unconditionally.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import random
import re
import struct
from collections.abc import Callable
from datetime import timedelta

import pytest

from kannon.envelope import mime, unsubscribe
from kannon.envelope.body import PLAN_CACHE, compile_html
from kannon.envelope.bounce import make_bounce_address
from kannon.envelope.build import (
    MAILER,
    BatchSpec,
    RecipientPart,
    build_envelope,
    build_headers,
    reference_body,
    render_body,
)
from kannon.envelope.dkim import DkimSigner, sign_all
from kannon.envelope.ids import make_email_id
from kannon.envelope.render import render_text
from kannon.envelope.tokens import BatchTokens, sign_click, sign_open, sign_unsubscribe
from kannon.envelope.tracking import tracker_base
from kannon.model.tracking import TrackingMode, TrackingPolicy, token_identity
from tests.envelope.envelope_testdata import BATCH_ID, NOW, TRACKING_KEY

MakeSpec = Callable[..., tuple[BatchSpec, RecipientPart, DkimSigner]]
BASE = "https://stats.k.example.com"
PSEUDONYM = "0123456789abcdef0123456789abcdef"
M = TrackingMode
POLICIES = [
    TrackingPolicy(opens, links)
    for opens in (M.OFF, M.ANONYMOUS, M.PSEUDONYMOUS, M.IDENTIFIED, M.FULL)
    for links in (M.OFF, M.ANONYMOUS, M.PSEUDONYMOUS, M.IDENTIFIED, M.FULL)
]

# Pieces of documents: ordinary mail markup, and markup that makes the plan refuse or fall back.
FRAGMENTS = [
    "<p>Hello {{ name }}, ",
    "your order {{ order }} ships.</p>\n",
    '<a href="https://shop.test/o/{{ order }}?u={{ email }}&amp;x=1">Order</a>',
    "<a href='https://shop.test/p?n={{ name }}'>p</a>",
    '<a href="https://shop.test/static">static</a>',
    '<a href="https://shop.test/same">same</a><a href="https://shop.test/same">again</a>',
    '<a data-no-track href="https://shop.test/x">untracked</a>',
    '<a href="https://shop.test/y" data-no-track="{{ name }}">untracked</a>',
    '<a href="mailto:{{ email }}">mail</a>',
    '<a href="{{ url }}">field as the whole url</a>',
    '<a href="#top" title="{{ name }}">top</a>',
    "<a href>bare</a>",
    '<a\n  class="btn"\n  href = "https://shop.test/{{ order }}"\n>multi-line</a>',
    '<img src="https://cdn.test/{{ order }}.png" alt="{{ name }}">',
    "{{{ raw }}}",
    "{{ missing }}",
    '{{ un"safe }}',
    "<b>{{name}}</b>{{   order   }}",
    "From the team\n",
    ".\n",
    "tab\there \n",
    "é ü 漢字 {{ name }}\n",
    "x" * 90 + "=" + "y" * 10 + "\n",
    "</body>",
    "</BODY >",
    "</html>\n",
    '<a href="https://shop.test/q?r={{{ raw }}}">raw in an href</a>',
]
# Structure a value could change: the plan refuses documents with these.
RISKY = [
    "<a href={{ url }}>unquoted</a>",
    "<{{ tag }}>",
    "<a{{ attr }} href='https://shop.test/'>",
    '<a href="https://shop.test/" {{ attr }}>x</a>',
    "</bo{{ tail }}",
    "<a <a <a",
    '<a title="</body>" href="https://shop.test/b">',
]

VALUES = [
    "Bob",
    "Zoë & Co",
    "<b>bold</b>",
    "a\"b'c",
    "  https://shop.test/v?a=1&b=2  ",
    "javascript:alert(1)",
    "",
    " ",
    "=",
    "From x",
    "href=x",
    "ÿ€",
    "{{ name }}",
    "a" * 80,
    '<a href="https://v.test/{{ name }}">v</a>',
    "</body>",
    '" data-no-track x="',
    "<a ",
]
FIELD_NAMES = ["name", "order", "email", "url", "raw", "tag", "attr", "tail"]


def _fields(rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(VALUES) for k in FIELD_NAMES if rng.random() < 0.85}


def _document(rng: random.Random) -> str:
    pieces = [rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12))]
    if rng.random() < 0.3:
        pieces.insert(rng.randint(0, len(pieces)), rng.choice(RISKY))
    return "".join(pieces)


def _batch(html: str, **overrides: object) -> BatchSpec:
    values: dict[str, object] = {
        "batch_id": BATCH_ID,
        "domain": "k.example.com",
        "sender_email": "news@k.example.com",
        "sender_alias": "Kannon News",
        "subject": "Hello {{ name }}",
        "html": html,
        "tracker_base_url": "https://stats.{domain}",
        "tracking_key": TRACKING_KEY,
        "token_expires_at": NOW + timedelta(days=90),
        "bounce_secret": b"b" * 32,
        "now": NOW,
    }
    values.update(overrides)
    return BatchSpec(**values)  # type: ignore[arg-type]


def _reference(batch: BatchSpec, part: RecipientPart) -> str:
    """The body as the straightforward path builds it."""
    policy = part.tracking
    base = tracker_base(batch.tracker_base_url, batch.domain) if batch.tracker_base_url else None
    tracked = bool(base) and (policy.opens.tracks or policy.links.tracks)
    link_identity = open_identity = None
    if tracked:
        link_identity = token_identity(policy.links, part.recipient, batch.domain, part.pseudonym)
        open_identity = token_identity(policy.opens, part.recipient, batch.domain, part.pseudonym)
    return reference_body(batch, part, base if tracked else None, link_identity, open_identity)


def test_compiled_body_equals_reference_on_generated_documents() -> None:
    rng = random.Random(56)
    compiled = fast = 0
    for _ in range(1500):
        html = _document(rng)
        plan = compile_html(html)
        compiled += plan is not None
        batch = _batch(html, tracker_base_url=rng.choice(["https://stats.{domain}", None, "/"]))
        for _ in range(6):
            fields = _fields(rng)
            part = RecipientPart(
                recipient=rng.choice(["bob@example.org", "zoë@example.org"]),
                fields=fields,
                tracking=rng.choice(POLICIES),
                pseudonym=PSEUDONYM,
            )
            if plan is not None and plan.values(fields) is not None:
                fast += 1
            base = (
                tracker_base(batch.tracker_base_url, batch.domain)
                if batch.tracker_base_url
                else None
            )
            assert render_body(batch, part, base) == _reference(batch, part), (html, fields)
    # The comparison must exercise the compiled path, not only the fallback.
    assert compiled > 100
    assert fast > 300


@pytest.mark.parametrize(
    "html",
    [
        "<a href={{ url }}>x</a>",
        "<{{ tag }}>",
        "<a{{ attr }} href='https://x.test/'>",
        '<a href="https://x.test/" {{ attr }}>x</a>',
        "</bo{{ tail }}>",
        "</body {{ tail }}>",
        "<a <a href='https://x.test/'>",
        '<a title="</body>" href="https://x.test/">x</a></body>',
    ],
)
def test_documents_a_value_could_restructure_are_not_compiled(html: str) -> None:
    assert compile_html(html) is None


def test_values_that_could_restructure_take_the_reference_path() -> None:
    plan = compile_html('<p>{{{ raw }}}</p><a href="https://x.test/{{ id }}">x</a></body>')
    assert plan is not None
    assert plan.values({"raw": "<b>", "id": "1"}) is None
    assert plan.values({"raw": "a'b", "id": "1"}) is None
    assert plan.values({"raw": "plain", "id": "<1>"}) == ["plain", "&lt;1&gt;"]
    assert plan.values({"id": "1"}) == ["{{{ raw }}}", "1"]
    batch = _batch('<p>{{{ raw }}}</p><a href="https://x.test/{{ id }}">x</a></body>')
    part = RecipientPart(recipient="bob@example.org", fields={"raw": '<a href="https://e.test">'})
    assert render_body(batch, part, BASE) == _reference(batch, part)
    assert render_body(batch, part, BASE).count("/c/") == 2  # the raw link is tracked too


def test_plan_cache_is_bounded() -> None:
    for i in range(PLAN_CACHE * 3):
        compile_html(f"<p>{i} {{{{ name }}}}</p>")
    assert compile_html.cache_info().currsize <= PLAN_CACHE


def test_batch_tokens_follow_the_documented_layout() -> None:
    """Tokens computed from scratch: kind, exp, kid, batch id, recipient, url, 16-byte MAC."""
    expires = NOW + timedelta(days=1)

    def token(kind: int, recipient: str, url: str) -> str:
        kid, batch, rcpt = (s.encode() for s in (TRACKING_KEY.kid, BATCH_ID, recipient))
        payload = (
            struct.pack(">BQ", kind, int(expires.timestamp()))
            + bytes([len(kid)])
            + kid
            + struct.pack(">H", len(batch))
            + batch
            + struct.pack(">H", len(rcpt))
            + rcpt
            + url.encode()
        )
        mac = hmac.digest(TRACKING_KEY.secret, b"kannon-tracking-token-v1\x00" + payload, "sha256")
        return base64.urlsafe_b64encode(payload + mac[:16]).rstrip(b"=").decode()

    tokens = BatchTokens(TRACKING_KEY, BATCH_ID, expires)
    for rcpt in ("bob@example.org", "zoë@example.org"):
        assert tokens.click(rcpt, "https://x.test/é", M.PSEUDONYMOUS) == token(
            0x32, rcpt, "https://x.test/é"
        )
        assert tokens.open(rcpt, M.FULL) == token(0x51, rcpt, "")
        assert tokens.open(rcpt) == token(0x41, rcpt, "")
        assert tokens.unsubscribe(rcpt) == token(0x03, rcpt, "")
        assert sign_click(TRACKING_KEY, BATCH_ID, rcpt, "u", expires) == token(0x42, rcpt, "u")
        assert sign_open(TRACKING_KEY, BATCH_ID, rcpt, expires) == token(0x41, rcpt, "")
        assert sign_unsubscribe(TRACKING_KEY, BATCH_ID, rcpt, expires) == token(0x03, rcpt, "")
    with pytest.raises(ValueError, match="needs a url"):
        tokens.click("bob@example.org", "")
    with pytest.raises(ValueError, match="no tracking token"):
        tokens.open("bob@example.org", M.OFF)


_FROM_LINE = re.compile(rb"^From ", re.MULTILINE)


def _reference_qp(text: str) -> bytes:
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    encoded = _FROM_LINE.sub(b"=46rom ", encoded)
    if encoded and not encoded.endswith(b"\n"):
        encoded += b"\n"
    return encoded.replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    "text", ["", "From a\n", "x\nFrom b", "xFrom c\n", "From", "\r\nFrom d\r", "a=b\n.\n"]
)
def test_quoted_printable_from_lines(text: str) -> None:
    assert mime.quoted_printable(text) == _reference_qp(text)


def _reference_envelope(batch: BatchSpec, part: RecipientPart, signer: DkimSigner) -> bytes:
    """build_envelope as it was: every step on the whole document, per Recipient."""
    subject = render_text(batch.subject, part.fields)
    base = tracker_base(batch.tracker_base_url, batch.domain) if batch.tracker_base_url else None
    html = _reference(batch, part)
    email_id = make_email_id(batch.batch_id, part.recipient)
    make_bounce_address(batch.batch_id, part.recipient, batch.bounce_secret)
    url: str | None = None
    if batch.unsubscribe_url_template is not None:
        url = unsubscribe.render_url(batch.unsubscribe_url_template, part.fields, part.recipient)
    elif batch.builtin_unsubscribe and base:
        token = sign_unsubscribe(
            batch.tracking_key, batch.batch_id, part.recipient, batch.token_expires_at
        )
        url = unsubscribe.builtin_url(base, token)
    headers = build_headers(batch, part.recipient, subject, email_id, url)
    qp = _reference_qp(html)
    if batch.attachments:
        mime_headers, body = mime.mime_body(html, batch.attachments, part.boundary_seed)
        assert qp in body
    else:
        mime_headers = [
            ("Content-Type", " " + mime.HTML_CONTENT_TYPE),
            ("Content-Transfer-Encoding", " quoted-printable"),
        ]
        body = qp
    headers += mime_headers
    headers += [mime.simple("X-Pool-Message-ID", batch.batch_id), ("X-Mailer", " " + MAILER)]
    signatures = sign_all([signer], headers, body, batch.now)
    return mime.serialise_headers([*signatures, *headers]) + b"\r\n" + body


def test_envelopes_equal_the_reference_build(signer: DkimSigner) -> None:
    rng = random.Random(12)
    html = "".join(FRAGMENTS) + "<p>{{{ raw }}}</p>\n</body></html>\n"
    variants: list[dict[str, object]] = [
        {},
        {"tracker_base_url": None},
        {"unsubscribe_url_template": "https://u.test/{{ email }}?o={{ order }}"},
        {"builtin_unsubscribe": True},
        {"builtin_unsubscribe": True, "tracker_base_url": None},
        {"attachments": (("a.pdf", b"%PDF-1.4 " * 40), ("notes.txt", b"hi"))},
        {"headers_to": ("a@example.org", "B <b@example.org>"), "headers_cc": ("c@example.org",)},
        {"subject": "Ünïcode {{ name }} {{{ raw }}}", "sender_alias": "Zoë"},
    ]
    for overrides in variants:
        batch = _batch(html, **overrides)
        for i in range(12):
            fields = _fields(rng)
            fields.setdefault("order", "A1")
            fields.setdefault("email", "bob@example.org")
            part = RecipientPart(
                recipient=f"r{i}@example.org",
                fields=fields,
                tracking=rng.choice(POLICIES),
                pseudonym=PSEUDONYM,
                boundary_seed=i.to_bytes(4, "big"),
                should_retry=i % 2 == 0,
            )
            try:
                expected = _reference_envelope(batch, part, signer)
            except ValueError as exc:
                with pytest.raises(ValueError, match=re.escape(str(exc))):
                    build_envelope(batch, part, signer)
                continue
            assert build_envelope(batch, part, signer).body == expected
