"""ARF feedback reports (RFC 5965) over real SMTP to the SMTPServer, on the real bus.

The reports are the real ones of shared/testdata (Return Path's FBL, abusix, Rackspace), made
to be about a message built by ``build_envelope``: its bounce address as Original-Mail-From and
Return-Path, its header block as the returned message. A complaint is published (with a PubAck,
before the 250) only when a verified bounce address and a Recipient matching it are found;
anything else is answered 250, counted and logged, and publishes nothing.
"""

from __future__ import annotations

import asyncio
import smtplib

import pytest
from prometheus_client import REGISTRY

from kannon.bus.client import Bus
from kannon.envelope import DkimSigner
from kannon.model.event_ids import delivery_event_id
from kannon.model.outcome import Complained
from tests.shared_data import bounce_testdata
from tests.smtp_server.smtp_support import (
    ARF_SAMPLES,
    DOMAIN,
    StartSmtp,
    arf_from_sample,
    sent_message,
)
from tests.support import read_events, stored_events

RECIPIENT = "Reader@Example.org"
FEEDBACK = "fbl@bounces.k.example.com"
FBL_SENDER = "fbl@feedback.isp.example"


async def submit(port: int, rcpts: list[str], body: bytes) -> tuple[list[int], int]:
    """An FBL's delivery: MAIL FROM the provider, the RCPTs, DATA. RCPT codes and DATA code."""

    def run() -> tuple[list[int], int]:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
            client.ehlo("fbl.isp.example")
            assert client.mail(FBL_SENDER)[0] == 250
            codes = [client.rcpt(rcpt)[0] for rcpt in rcpts]
            if not any(code == 250 for code in codes):
                return codes, 0
            return codes, client.data(body)[0]

    return await asyncio.to_thread(run)


def complaints(result: str) -> float:
    return REGISTRY.get_sample_value("kannon_smtp_complaints_total", {"result": result}) or 0.0


@pytest.mark.parametrize("sample", ARF_SAMPLES)
async def test_a_report_to_the_feedback_address_publishes_a_complaint(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner, sample: str
) -> None:
    server = await start_smtp(feedback_address=FEEDBACK)
    sent = sent_message(signer, RECIPIENT)
    # The provider redacted the To: of the returned message; our Message-ID names the Recipient.
    report = arf_from_sample(sample, sent, redact_to=True)
    before = complaints("published")
    assert await submit(server.port, [FEEDBACK.upper()], report) == ([250], 250)
    assert await stored_events(bus) == 1  # published before the 250
    (event,) = await read_events(bus, "kannon.stats.complained", 1)
    assert (event.batch_id, event.domain, event.recipient) == (
        sent.batch_id,
        DOMAIN,
        "Reader@example.org",
    )
    assert isinstance(event.detail, Complained)
    assert event.detail.feedback_type == "abuse"
    assert event.detail.user_agent  # the reporter, as the report names it
    assert event.event_id == delivery_event_id("complained", sent.batch_id, "reader@example.org")
    assert complaints("published") == before + 1


async def test_a_report_to_the_bounce_address_publishes_a_complaint_once(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp(feedback_address=FEEDBACK)
    sent = sent_message(signer, RECIPIENT)
    report = arf_from_sample("arf-21.eml", sent)
    assert await submit(server.port, [sent.bounce_address], report) == ([250], 250)
    # The same complaint again, and through the feedback loop too: one event.
    assert await submit(server.port, [sent.bounce_address], report) == ([250], 250)
    assert await submit(server.port, [FEEDBACK], report) == ([250], 250)
    assert await stored_events(bus) == 1


async def test_the_recipient_is_found_from_original_rcpt_to_without_a_message_id(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp(feedback_address=FEEDBACK)
    sent = sent_message(signer, RECIPIENT)
    headers = b"\r\n".join(
        line for line in sent.headers.split(b"\r\n") if not line.startswith(b"Message-ID:")
    )
    anonymous = type(sent)(sent.batch_id, sent.recipient, sent.bounce_address, headers)
    report = arf_from_sample(
        "arf-17.eml", anonymous, original_rcpt_to=RECIPIENT, redact_to=True, return_path=False
    )
    assert await submit(server.port, [FEEDBACK], report) == ([250], 250)
    (event,) = await read_events(bus, "kannon.stats.complained", 1)
    assert event.recipient.lower() == RECIPIENT.lower()


async def test_reports_that_map_to_nothing_create_nothing(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner
) -> None:
    server = await start_smtp(feedback_address=FEEDBACK)
    sent = sent_message(signer, RECIPIENT)
    victim = sent_message(signer, "victim@example.org", batch_id=sent.batch_id)
    local, _, domain = sent.bounce_address.partition("@")
    forged = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
    stranger = type(sent)(sent.batch_id, sent.recipient, forged, sent.headers)
    # A Message-ID naming another Recipient of the same Batch, behind the reporter's own
    # bounce address: the keyed hash does not match, so the victim is not suppressed.
    swapped = type(sent)(
        sent.batch_id,
        sent.recipient,
        sent.bounce_address,
        sent.headers.replace(
            sent.headers.split(b"Message-ID: ")[1].split(b"\r\n")[0],
            victim.headers.split(b"Message-ID: ")[1].split(b"\r\n")[0],
        ),
    )
    reports = [
        # A real report about somebody else's message, verbatim.
        (bounce_testdata() / "emails" / "arf-21.eml").read_bytes().replace(b"\n", b"\r\n"),
        # Our message, but the bounce address's tag does not verify.
        arf_from_sample("arf-15.eml", stranger),
        # Recipient redacted everywhere and no Message-ID left to name it.
        arf_from_sample(
            "arf-25.eml",
            type(sent)(
                sent.batch_id,
                sent.recipient,
                sent.bounce_address,
                sent.headers.replace(b"Message-ID:", b"X-Removed:"),
            ),
            original_rcpt_to="hashed@example.com",
            redact_to=True,
        ),
        arf_from_sample("arf-15.eml", swapped, redact_to=True),
    ]
    before = complaints("unmapped")
    for report in reports:
        assert await submit(server.port, [FEEDBACK], report) == ([250], 250)
    assert complaints("unmapped") == before + len(reports)
    assert await stored_events(bus) == 0


@pytest.mark.parametrize("feedback_type", ["auth-failure", "not-spam", "virus", "fraud", "other"])
async def test_other_feedback_types_are_not_complaints(
    start_smtp: StartSmtp, bus: Bus, signer: DkimSigner, feedback_type: str
) -> None:
    server = await start_smtp(feedback_address=FEEDBACK)
    sent = sent_message(signer, RECIPIENT)
    report = arf_from_sample("arf-21.eml", sent, feedback_type=feedback_type)
    before = complaints("not_abuse")
    assert await submit(server.port, [FEEDBACK], report) == ([250], 250)
    assert complaints("not_abuse") == before + 1
    assert await stored_events(bus) == 0


async def test_the_feedback_address_is_accepted_only_when_configured(
    start_smtp: StartSmtp, signer: DkimSigner
) -> None:
    sent = sent_message(signer, RECIPIENT)
    report = arf_from_sample("arf-21.eml", sent)
    without = await start_smtp()
    assert (await submit(without.port, [FEEDBACK], report))[0] == [550]
    configured = await start_smtp(feedback_address=FEEDBACK)
    assert (await submit(configured.port, ["other@bounces.k.example.com"], report))[0] == [550]
    assert (await submit(configured.port, [f"<{FEEDBACK}>"], report))[0] == [250]
