"""`Envelope` <-> `EmailToSend` (the payload on kannon.sending), field for field."""

from __future__ import annotations

import pytest

from kannon.envelope.build import Envelope
from kannon.pb.mailer.types import email_pb2
from kannon.wire.envelope import UndecodableEnvelope, decode, encode

JOB = Envelope(
    email_id="<YUBleGFtcGxlLnRlc3Q=/msg_abc@tenant.test>",
    sender="News <news@tenant.test>",
    recipient="a@example.test",
    return_path="bump_x@tenant.test",
    body=b"Subject: hi\r\n\r\n\xc3\xa9\r\n",
    should_retry=True,
)


def test_round_trip() -> None:
    assert decode(encode(JOB)) == JOB


def test_fields_land_on_the_original_proto_fields() -> None:
    msg = email_pb2.EmailToSend.FromString(encode(JOB))
    assert getattr(msg, "from") == JOB.sender
    assert (msg.email_id, msg.to, msg.return_path, msg.body, msg.should_retry) == (
        JOB.email_id,
        JOB.recipient,
        JOB.return_path,
        JOB.body,
        True,
    )
    # Field numbers as in the original (spec §1.5): email_id=1, from=2, to=3, return_path=4,
    # body=5, should_retry=6.
    numbers = {f.name: f.number for f in email_pb2.EmailToSend.DESCRIPTOR.fields}
    assert numbers == {
        "email_id": 1,
        "from": 2,
        "to": 3,
        "return_path": 4,
        "body": 5,
        "should_retry": 6,
    }


def test_garbage_is_undecodable() -> None:
    with pytest.raises(UndecodableEnvelope):
        decode(b"\xff\xff\xff")
