"""Envelopes on `kannon.sending`: `pkg.kannon.mailer.types.EmailToSend` <-> `envelope.Envelope`.

Owns the translation between the wire message the Dispatcher publishes and the Envelope the
SMTPSender works with, so neither handles protobuf objects (nor trips over the field named
`from`, a Python keyword). The Envelope is encoded as built: there is no second shape of it.
"""

from __future__ import annotations

from kannon.envelope.build import Envelope
from kannon.pb.mailer.types import email_pb2 as pb


class UndecodableEnvelope(ValueError):
    """The payload is not an EmailToSend message."""


def envelope_pb(env: Envelope) -> pb.EmailToSend:
    return pb.EmailToSend(
        email_id=env.email_id,
        to=env.recipient,
        return_path=env.return_path,
        body=env.body,
        should_retry=env.should_retry,
        **{"from": env.sender},
    )


def encode(env: Envelope) -> bytes:
    return bytes(envelope_pb(env).SerializeToString())


def decode(payload: bytes) -> Envelope:
    msg = pb.EmailToSend()
    try:
        msg.ParseFromString(payload)
    except Exception as exc:  # protobuf raises DecodeError, but also others on garbage
        raise UndecodableEnvelope(f"not an EmailToSend message: {exc}") from exc
    return Envelope(
        email_id=msg.email_id,
        sender=getattr(msg, "from"),
        recipient=msg.to,
        return_path=msg.return_path,
        body=bytes(msg.body),
        should_retry=msg.should_retry,
    )
