"""How each way a delivery attempt ends becomes Delivered, Bounced or Errored."""

from __future__ import annotations

import pytest

from kannon.model.outcome import Bounced, Delivered, Errored
from kannon.smtp_sender.result import SendResult, detail_for

CASES = [
    # (result, should_retry, expected)
    (SendResult.delivered(250, "ok", "mx"), True, Delivered()),
    (SendResult.delivered(250, "ok", "mx"), False, Delivered()),
    (SendResult.refused(550, "5.1.1 unknown", "mx"), True, Bounced(True, 550, "5.1.1 unknown")),
    (SendResult.refused(554, "5.7.1 spam", "mx"), False, Bounced(True, 554, "5.7.1 spam")),
    (SendResult.refused(451, "4.7.1 later", "mx"), True, Errored(451, "4.7.1 later")),
    (SendResult.refused(451, "4.7.1 later", "mx"), False, Bounced(False, 451, "4.7.1 later")),
    # A reply outside 4xx/5xx is a protocol oddity: retried, never trusted as a verdict.
    (SendResult.refused(250, "odd", "mx"), False, Errored(250, "odd")),
    # Refusing the session says nothing about the Recipient.
    (SendResult.session_refused(554, "blocked", "mx"), True, Errored(554, "blocked")),
    (SendResult.session_refused(535, "bad creds", "relay"), False, Errored(535, "bad creds")),
    (SendResult.session_refused(421, "busy", "mx"), False, Errored(421, "busy")),
    # No answer: code 0, whatever should_retry says (the Dispatcher decides Failed vs retry).
    (SendResult.no_answer("refused"), True, Errored(0, "refused")),
    (SendResult.no_answer("timeout", possibly_delivered=True), False, Errored(0, "timeout")),
    (SendResult.local_bounce(550, "null MX"), True, Bounced(True, 550, "null MX")),
    (
        SendResult.local_bounce(512, "error sending email"),
        False,
        Bounced(True, 512, "error sending email"),
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
