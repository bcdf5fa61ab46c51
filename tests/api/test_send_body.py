"""A send request read from its wire bytes (ADR 0059): the head decodes as the whole message
without its Recipients, the Recipients come back in order a chunk at a time, and the
idempotency fingerprint is the one of the whole decoded message, byte for byte."""

from __future__ import annotations

from typing import Any

import pytest

from kannon.api import send_body
from kannon.api.send_body import SendBody
from kannon.model.errors import InvalidArgument
from kannon.model.idempotency import fingerprint, fingerprint_prefix
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.types import send_pb2
from kannon.pb.tracking.types import tracking_pb2


def full_request(recipients: int) -> mailer_pb.SendHTMLReq:
    request = mailer_pb.SendHTMLReq(
        sender=send_pb2.Sender(email="news@body.example", alias="News"),
        subject="Hi {{ name }}",
        html="<p>{{ name }}</p>",
        global_fields={"z": "last", "a": "first", "m": "middle"},
        ip_pool="bulk",
    )
    request.scheduled_time.FromSeconds(1_800_000_000)
    request.headers.to.append("boss@body.example")
    request.attachments.add(filename="a.txt", content=b"hello")
    request.tracking.opens = tracking_pb2.TRACKING_MODE_OFF
    for i in range(recipients):
        # Several fields: their map order on the wire is not the deterministic one.
        request.recipients.add(
            email=f"user{i}@x.test", fields={"name": f"U{i}", "b": "2", "a": "1"}
        )
    return request


def read(data: bytes) -> SendBody:
    body = SendBody(mailer_pb.SendHTMLReq, data)
    body.index()
    return body


def emails(body: SendBody) -> list[str]:
    return [r.email for chunk in body.chunks() for r in chunk]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_body, "CHUNK", 3)


@pytest.mark.usefixtures("small_chunks")
def test_the_head_is_the_request_without_recipients_and_these_come_in_chunks() -> None:
    request = full_request(8)
    body = read(request.SerializeToString())
    assert not body.whole
    assert body.count == 8
    without = mailer_pb.SendHTMLReq()
    without.CopyFrom(request)
    del without.recipients[:]
    assert body.head == without
    assert [len(chunk) for chunk in body.chunks()] == [3, 3, 2]
    assert emails(body) == [r.email for r in request.recipients]
    assert [dict(r.fields) for c in body.chunks() for r in c][5] == dict(
        request.recipients[5].fields
    )


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("recipients", [0, 1, 3, 7])
@pytest.mark.parametrize("above", [True, False], ids=["fields-above", "none-above"])
def test_the_fingerprint_is_the_whole_messages(recipients: int, above: bool) -> None:
    request = full_request(recipients)
    if not above:  # no known field numbered above the Recipients' 6
        for name in ("attachments", "global_fields", "headers", "tracking", "ip_pool"):
            request.ClearField(name)
    # Fields of a newer client (unknown here), below and above the Recipients' number.
    extra = b"\x10\x07" + b"\xa8\x06\x05"  # field 2 = 7, field 101 = 5 (varints)
    for data in (request.SerializeToString(), request.SerializeToString() + extra):
        expected = fingerprint(
            "SendHTML", mailer_pb.SendHTMLReq.FromString(data).SerializeToString(deterministic=True)
        )
        body = read(data)
        assert body.deterministic_digest(fingerprint_prefix("SendHTML")) == expected


def split_recipients(request: Any) -> bytes:
    """The request's bytes with one field (the subject) between two of its Recipients."""
    first = mailer_pb.SendHTMLReq()
    first.recipients.add().CopyFrom(request.recipients[0])
    rest = mailer_pb.SendHTMLReq()
    rest.CopyFrom(request)
    del rest.recipients[0]
    return bytes(first.SerializeToString() + rest.SerializeToString())


@pytest.mark.usefixtures("small_chunks")
def test_recipients_split_by_another_field_are_decoded_whole() -> None:
    request = full_request(5)
    data = split_recipients(request)
    body = read(data)
    assert body.whole
    assert body.count == 5
    assert emails(body) == [r.email for r in request.recipients]
    expected = fingerprint(
        "SendHTML", mailer_pb.SendHTMLReq.FromString(data).SerializeToString(deterministic=True)
    )
    assert body.deterministic_digest(fingerprint_prefix("SendHTML")) == expected


def test_undecodable_bytes_are_an_invalid_argument() -> None:
    data = full_request(2).SerializeToString()
    with pytest.raises(InvalidArgument, match="not a valid SendHTMLReq"):
        read(data[:-3])


def test_a_decoded_message_is_read_as_it_is() -> None:
    request = full_request(4)
    body = SendBody.decoded(request)
    body.index()
    assert body.head is request
    assert body.count == 4
    assert emails(body) == [r.email for r in request.recipients]
