"""The intake's Envelope size bound is never below what the Dispatcher really publishes, and not
wildly above it either (so it refuses only what is near the bus limit)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kannon.envelope import BatchSpec, DkimSigner, RecipientPart
from kannon.envelope.build import build_envelope
from kannon.envelope.mime import base64_body
from kannon.envelope.size import base64_size, estimate_largest_envelope
from kannon.envelope.tokens import TrackingKey
from kannon.wire import envelope as wire_envelope
from tests.envelope.envelope_testdata import BATCH_ID, BOUNCE_SECRET, DOMAIN, NOW

# The Dispatcher's real key id format ("key_" + 24 hex digits).
KID = "key_" + "0" * 24
KEY = TrackingKey(KID, b"k" * 32)
BASE = "https://track.{domain}"


def published_size(
    signer: DkimSigner,
    *,
    html: str,
    subject: str,
    alias: str,
    recipient: str,
    fields: Mapping[str, str],
    attachments: Sequence[tuple[str, bytes]],
    headers_to: Sequence[str] = (),
    headers_cc: Sequence[str] = (),
) -> int:
    """Bytes the bus carries for this Envelope: EmailToSend plus the NATS headers."""
    env = build_envelope(
        BatchSpec(
            batch_id=BATCH_ID,
            domain=DOMAIN,
            sender_email=f"news@{DOMAIN}",
            sender_alias=alias,
            subject=subject,
            html=html,
            tracker_base_url=BASE,
            tracking_key=KEY,
            token_expires_at=NOW,
            bounce_secret=BOUNCE_SECRET,
            now=NOW,
            attachments=attachments,
            headers_to=headers_to,
            headers_cc=headers_cc,
        ),
        RecipientPart(recipient=recipient, fields=fields, boundary_seed=b"0123456789"),
        signer,
    )
    payload = wire_envelope.encode(env)
    nats_headers = f"NATS/1.0\r\nNats-Msg-Id: {env.email_id}.12\r\n\r\n"
    return len(payload) + len(nats_headers)


def estimate(
    *,
    html: str,
    subject: str,
    alias: str,
    recipients: Sequence[tuple[str, Mapping[str, str]]],
    attachments: Sequence[tuple[str, bytes]],
    headers_to: Sequence[str] = (),
    headers_cc: Sequence[str] = (),
) -> int:
    result = estimate_largest_envelope(
        html=html,
        subject=subject,
        domain=DOMAIN,
        batch_id=BATCH_ID,
        sender_email=f"news@{DOMAIN}",
        sender_alias=alias,
        recipients=recipients,
        attachments={name: len(data) for name, data in attachments},
        headers_to=headers_to,
        headers_cc=headers_cc,
        tracker_base_url=BASE,
        tracking_kid_bytes=len(KID),
    )
    assert result is not None
    return result.size


ALPHABETS = (
    "abcdefghij klmnop",
    "äöü éè ñ 中文字 😀",
    "<>&\"' =?x?= From \t",
    "\u202e\u200b",
)


def _text(rng: random.Random, n: int) -> str:
    alphabet = "".join(rng.sample(ALPHABETS, rng.randint(1, len(ALPHABETS))))
    return "".join(rng.choice(alphabet) for _ in range(n))


def _case(rng: random.Random) -> dict[str, Any]:
    names = ["name", "url", "raw", "code"]
    parts: list[str] = ["<html><body>"]
    for _ in range(rng.randint(0, 40)):
        kind = rng.randrange(6)
        if kind == 0:
            parts.append(f'<a href="https://example.com/{_text(rng, rng.randint(0, 80))}">x</a>')
        elif kind == 1:
            parts.append(f'<a href="{{{{ {rng.choice(names)} }}}}">link</a>')
        elif kind == 2:
            parts.append(f"{{{{ {rng.choice(names)} }}}}")
        elif kind == 3:
            parts.append(f"{{{{{{ {rng.choice(names)} }}}}}}")
        elif kind == 4:
            parts.append("\n" + _text(rng, rng.randint(0, 400)))
        else:
            parts.append('<a href="mailto:x@y.test">mail</a><a href="#top" data-no-track>t</a>')
    parts.append("</body></html>")
    recipients = []
    for i in range(rng.randint(1, 4)):
        fields = {
            "name": _text(rng, rng.randint(0, 60)),
            "url": "https://example.org/" + _text(rng, rng.randint(0, 120)),
            "raw": rng.choice(["", "<b>bold</b>", '<a href="https://raw.test/x">r</a>' * 3]),
            "code": _text(rng, rng.randint(0, 20)),
        }
        local = "u" * rng.randint(1, 64)
        recipients.append((f"{local}{i}@example.com", fields))
    attachments = [
        (_text(rng, rng.randint(1, 300)) + ".pdf", rng.randbytes(rng.randint(0, 5000)))
        for _ in range(rng.randint(0, 3))
    ]
    # Names must be unique and non-blank, as intake guarantees.
    attachments = [
        (f"{i}-{name.strip() or 'a'}", data) for i, (name, data) in enumerate(attachments)
    ]
    return {
        "html": "".join(parts),
        "subject": rng.choice(["Hello {{ name }}", _text(rng, rng.randint(1, 200)), "{{ code }}"]),
        "alias": _text(rng, rng.randint(0, 100)).replace("\r", "").replace("\n", ""),
        "recipients": recipients,
        "attachments": attachments,
        "headers_to": rng.choice([(), ("a@example.com", "b" * 60 + "@example.com")]),
        "headers_cc": rng.choice([(), ("c@example.com",)]),
    }


@pytest.mark.parametrize("seed", range(60))
def test_the_bound_holds_for_every_recipient(signer: DkimSigner, seed: int) -> None:
    rng = random.Random(seed)
    case = _case(rng)
    subject = str(case["subject"])
    # Values rendered into the Subject cannot hold CR/LF (intake refuses them).
    recipients = [
        (email, {k: v.replace("\r", "").replace("\n", "") for k, v in fields.items()})
        for email, fields in case["recipients"]
    ]
    bound = estimate(
        html=str(case["html"]),
        subject=subject,
        alias=str(case["alias"]),
        recipients=recipients,
        attachments=case["attachments"],
        headers_to=case["headers_to"],
        headers_cc=case["headers_cc"],
    )
    actual = max(
        published_size(
            signer,
            html=str(case["html"]),
            subject=subject,
            alias=str(case["alias"]),
            recipient=email,
            fields=fields,
            attachments=case["attachments"],
            headers_to=case["headers_to"],
            headers_cc=case["headers_cc"],
        )
        for email, fields in recipients
    )
    assert bound >= actual


def test_the_bound_is_close_for_a_large_attachment(signer: DkimSigner) -> None:
    data = random.Random(1).randbytes(700_000)
    kwargs: dict[str, Any] = {
        "html": '<p>Hi {{ name }}, <a href="https://example.com/invoice">your invoice</a></p>',
        "subject": "Invoice for {{ name }}",
        "alias": "Billing",
        "attachments": [("invoice.pdf", data)],
    }
    fields = {"name": "Ada"}
    actual = published_size(signer, recipient="ada@example.com", fields=fields, **kwargs)
    bound = estimate(recipients=[("ada@example.com", fields)], **kwargs)
    assert actual <= bound <= actual + 8 * 1024


def test_the_largest_recipient_is_named(signer: DkimSigner) -> None:
    result = estimate_largest_envelope(
        html="<p>{{ bio }}</p>",
        subject="Hi",
        domain=DOMAIN,
        batch_id=BATCH_ID,
        sender_email=f"news@{DOMAIN}",
        sender_alias="",
        recipients=[("a@x.test", {"bio": "short"}), ("b@x.test", {"bio": "long " * 1000})],
        attachments={},
        headers_to=(),
        headers_cc=(),
        tracker_base_url=None,
        tracking_kid_bytes=len(KID),
    )
    assert result is not None and result.recipient == "b@x.test"


@pytest.mark.parametrize("length", [0, 1, 2, 3, 56, 57, 58, 1000, 70_001])
def test_base64_size_is_exact(length: int) -> None:
    assert base64_size(length) == len(base64_body(b"\xff" * length))


@pytest.mark.parametrize("seed", range(20))
def test_the_quick_bound_under_a_limit_is_still_a_bound(seed: int) -> None:
    case = _case(random.Random(seed))
    common: dict[str, Any] = {
        "html": case["html"],
        "subject": case["subject"],
        "domain": DOMAIN,
        "batch_id": BATCH_ID,
        "sender_email": f"news@{DOMAIN}",
        "sender_alias": case["alias"],
        "recipients": case["recipients"],
        "attachments": {name: len(data) for name, data in case["attachments"]},
        "headers_to": case["headers_to"],
        "headers_cc": case["headers_cc"],
        "tracker_base_url": BASE,
        "tracking_kid_bytes": len(KID),
    }
    exact = estimate_largest_envelope(**common)
    quick = estimate_largest_envelope(**common, limit=10**9)
    assert exact is not None and quick is not None
    assert quick.size >= exact.size
    # Near the limit the exact bound decides.
    tight = estimate_largest_envelope(**common, limit=exact.size)
    assert tight is not None and tight.size == exact.size
