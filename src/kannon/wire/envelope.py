"""Envelopes on `kannon.sending`: `pkg.kannon.mailer.types.EmailToSend` <-> `SendJob`.

Owns the translation between the wire message the Dispatcher publishes and the plain value the
SMTPSender works with, so the sender never handles protobuf objects (and never trips over the
field named `from`, a Python keyword).
"""

from __future__ import annotations

from dataclasses import dataclass

from kannon.pb.mailer.types import email_pb2 as pb


class UndecodableEnvelope(ValueError):
    """The payload is not an EmailToSend message."""


@dataclass(frozen=True)
class SendJob:
    """One Envelope: a built, signed message for one Recipient of one Batch."""

    email_id: str
    """`<base64url(recipient)/batch_id>`, also the Message-ID header."""
    sender: str
    """The header From address (EmailToSend.from); informative, SMTP uses `return_path`."""
    recipient: str
    return_path: str
    """SMTP MAIL FROM: the bounce address."""
    body: bytes
    """The whole RFC 5322 message, headers and DKIM signature included."""
    should_retry: bool
    """False on the last attempt the retry budget allows: a 4xx then ends as Bounced."""


def job_pb(job: SendJob) -> pb.EmailToSend:
    return pb.EmailToSend(
        email_id=job.email_id,
        to=job.recipient,
        return_path=job.return_path,
        body=job.body,
        should_retry=job.should_retry,
        **{"from": job.sender},
    )


def encode(job: SendJob) -> bytes:
    return bytes(job_pb(job).SerializeToString())


def decode(payload: bytes) -> SendJob:
    msg = pb.EmailToSend()
    try:
        msg.ParseFromString(payload)
    except Exception as exc:  # protobuf raises DecodeError, but also others on garbage
        raise UndecodableEnvelope(f"not an EmailToSend message: {exc}") from exc
    return SendJob(
        email_id=msg.email_id,
        sender=getattr(msg, "from"),
        recipient=msg.to,
        return_path=msg.return_path,
        body=bytes(msg.body),
        should_retry=msg.should_retry,
    )
