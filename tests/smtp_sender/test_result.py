"""How each way a delivery attempt ends becomes Delivered, Bounced or Errored."""

from __future__ import annotations

import pytest

from kannon.model.outcome import Bounced, Delivered, Errored
from kannon.smtp_sender.result import SendResult, detail_for


def bounced(
    permanent: bool, code: int, message: str, status: str, reason: str, *, hard: bool = False
) -> Bounced:
    return Bounced(
        permanent, code, message, status=status, reason=reason, hard_bounce=hard, remote_mta="mx"
    )


CASES = [
    # (result, should_retry, expected)
    (SendResult.delivered(250, "ok", "mx"), True, Delivered()),
    (SendResult.delivered(250, "ok", "mx"), False, Delivered()),
    # An address-level 5xx at RCPT whose words agree: a hard bounce (ADR 0029).
    (
        SendResult.refused(550, "5.1.1 <a@b.test>: User unknown", "mx", command="RCPT"),
        True,
        bounced(True, 550, "5.1.1 <a@b.test>: User unknown", "5.1.1", "userunknown", hard=True),
    ),
    # A bare code with no words is a bounce, not proof the address is dead.
    (
        SendResult.refused(550, "5.1.1 unknown", "mx", command="RCPT"),
        True,
        bounced(True, 550, "5.1.1 unknown", "5.1.1", "userunknown"),
    ),
    # Policy and content refusals never say anything about the address.
    (
        SendResult.refused(554, "5.7.1 Message rejected as spam", "mx", command="DATA"),
        False,
        bounced(True, 554, "5.7.1 Message rejected as spam", "5.7.1", "spamdetected"),
    ),
    (SendResult.refused(451, "4.7.1 later", "mx"), True, Errored(451, "4.7.1 later")),
    (
        SendResult.refused(451, "4.7.1 later", "mx"),
        False,
        bounced(False, 451, "4.7.1 later", "4.7.1", "blocked"),
    ),
    # A reply outside 4xx/5xx is a protocol oddity: retried, never trusted as a verdict.
    (SendResult.refused(250, "odd", "mx"), False, Errored(250, "odd")),
    # Refusing the session says nothing about the Recipient.
    (SendResult.session_refused(554, "blocked", "mx"), True, Errored(554, "blocked")),
    (SendResult.session_refused(535, "bad creds", "relay"), False, Errored(535, "bad creds")),
    (SendResult.session_refused(421, "busy", "mx"), False, Errored(421, "busy")),
    # No answer: code 0, whatever should_retry says (the Dispatcher decides Failed vs retry).
    (SendResult.no_answer("refused"), True, Errored(0, "refused")),
    (SendResult.no_answer("timeout", possibly_delivered=True), False, Errored(0, "timeout")),
    # A null MX (RFC 7505) is the domain saying it takes no mail: a dead address.
    (
        SendResult.local_bounce(550, "5.1.10 nomail.test accepts no mail (null MX, RFC 7505)"),
        True,
        Bounced(
            True,
            550,
            "5.1.10 nomail.test accepts no mail (null MX, RFC 7505)",
            status="5.1.10",
            reason="notaccept",
            hard_bounce=True,
        ),
    ),
    (
        SendResult.local_bounce(512, "error sending email"),
        False,
        Bounced(True, 512, "error sending email", status="5.0.0", reason="onhold"),
    ),
]


@pytest.mark.parametrize(("result", "should_retry", "expected"), CASES)
def test_classification(result: SendResult, should_retry: bool, expected: object) -> None:
    assert detail_for(result, should_retry) == expected


def test_only_an_accepted_or_ambiguous_send_counts_as_possibly_delivered() -> None:
    assert SendResult.delivered(250, "ok", "mx").possibly_delivered
    assert SendResult.no_answer("lost after DATA", possibly_delivered=True).possibly_delivered
    for result in (
        SendResult.refused(550, "no", "mx"),
        SendResult.session_refused(421, "busy", "mx"),
        SendResult.no_answer("refused"),
        SendResult.local_bounce(550, "null MX"),
    ):
        assert not result.possibly_delivered
