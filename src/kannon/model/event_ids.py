"""Identifiers that make a publish idempotent: the `Nats-Msg-Id` of an Envelope and the id of every
outcome event, whoever publishes it (Validator, Dispatcher, SMTPSender, SMTPServer, Tracker, the
api's webhook test). This module is the one home of every format: a Component builds or reads an
event id only through these functions (ADR 0050).

An event id is both the event's `Nats-Msg-Id` (JetStream drops a second publish inside the
duplicate window) and `stats.event_id` (Stats stores an event once). So the same happening must
always get the same id, and two different happenings never one id (ADR 0006, ADR 0025):

* an Envelope is identified by its Delivery's email id and its **attempt** (the Pool row's
  `send_attempts_cnt` when it was dispatched): the same attempt published twice is one message,
  a retry is a new one;
* an SMTPSender outcome answers one attempt, so its id is (type, email id, attempt): a second copy
  of the same attempt — redelivered, or republished by a Dispatcher that reclaimed the claim —
  publishes the same id, and the Dispatcher reads the attempt back to ignore a late error about
  an attempt that is no longer the one in flight;
* a Delivery is validated once and ends once, so those events are (type, Batch, Recipient);
  so is a complaint: a Recipient complains about one Delivery once, however many copies of the
  report arrive (`complained.<Batch>.<digest>`).
* a Recipient unsubscribes from a Batch once, however often the URL is posted (a mail client
  retrying, a reader pressing the button twice): (type, Batch, Recipient) too;
* a DSN reports on one Recipient once, however many copies of the report arrive: its id digests
  (Batch, Recipient, status, the report's Message-ID) (`bounced.dsn.<digest>`);
* an open or a click happens anew every time: its id is the type and a random token the caller
  draws (`<type>.<token>`), as is a webhook endpoint's test event (`test.<token>`).

Recipients and email ids enter as digests: an address can hold anything, and none of it belongs in
a NATS header verbatim. Pure: no I/O.
"""

from __future__ import annotations

import functools
import hashlib

_DIGEST_CHARS = 32
_SEP = "."


# The SMTPSender digests an Envelope's email id twice per attempt (its guard key, then its
# outcome's id), with other Envelopes' in between: a small cache makes the second one a lookup.
@functools.lru_cache(maxsize=1024)
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]


def envelope_msg_id(email_id: str, attempt: int) -> str:
    """`Nats-Msg-Id` of an Envelope: `<email id>.<attempt>`."""
    return f"{email_id}.{attempt}"


def parse_envelope_msg_id(msg_id: str | None) -> tuple[str, int] | None:
    """(email id, attempt) of an Envelope's `Nats-Msg-Id`, or None when it is not one of ours."""
    if not msg_id:
        return None
    email_id, dot, attempt = msg_id.rpartition(".")
    if not dot or not email_id or not attempt.isdigit():
        return None
    return email_id, int(attempt)


def send_guard_key(envelope_id: str | None, stream_seq: int, email_id: str) -> str:
    """Key of an Envelope in the SMTPSender's send guard.

    Keyed by the Envelope's attempt (its `Nats-Msg-Id`) so that any copy of one attempt finds
    what the first did; an Envelope without our `Nats-Msg-Id` falls back to its stream sequence.
    """
    parsed = parse_envelope_msg_id(envelope_id)
    if parsed is not None:
        return f"a.{_digest(parsed[0])}.{parsed[1]}"
    return f"{stream_seq}.{_digest(email_id)[:16]}"


def send_outcome_id(outcome_type: str, envelope_id: str | None, stream_seq: int) -> str:
    """Id of the outcome the SMTPSender publishes for an Envelope: `<type>.<digest>.<attempt>`,
    or `<type>.<stream seq>` for an Envelope without our `Nats-Msg-Id`."""
    parsed = parse_envelope_msg_id(envelope_id)
    if parsed is None:
        return _SEP.join((outcome_type, str(stream_seq)))
    return _SEP.join((outcome_type, _digest(parsed[0]), str(parsed[1])))


def attempt_of_send_outcome(event_id: str | None) -> int | None:
    """The attempt an SMTPSender outcome answers (the Dispatcher reads it to ignore an Errored
    about an earlier attempt), or None when its id does not say: the inverse of
    `send_outcome_id` for an Envelope with our `Nats-Msg-Id`."""
    if not event_id:
        return None
    parts = event_id.split(_SEP)
    if len(parts) != 3 or len(parts[1]) != _DIGEST_CHARS or not parts[2].isdigit():
        return None
    return int(parts[2])


def delivery_event_id(kind: str, batch_id: str, recipient: str) -> str:
    """Id of an event that happens once per Delivery (validated, rejected, ended by the
    Dispatcher): `<type>.<Batch id>.<digest of the Recipient>`."""
    return _SEP.join((kind, batch_id, _digest(recipient)))


def dsn_event_id(batch_id: str, recipient: str, status: str, report_id: str) -> str:
    """Id of the Bounced the SMTPServer publishes for one Recipient of a DSN:
    `bounced.dsn.<sha256 of (Batch, lower-cased Recipient, status, the report's Message-ID)>`.
    Every copy of one report gives one id; a second report (another status) another."""
    material = "\x00".join((batch_id, recipient.lower(), status, report_id))
    return "bounced.dsn." + hashlib.sha256(material.encode()).hexdigest()


def random_event_id(kind: str, token: str) -> str:
    """Id of an event that is new each time it happens (an open, a click): `<type>.<token>`,
    the token drawn at random by the caller."""
    return _SEP.join((kind, token))


def webhook_test_event_id(token: str) -> str:
    """Id of the test event the api sends a webhook endpoint: `test.<token>` (a random token)."""
    return random_event_id("test", token)


def webhook_id(event_id: str) -> str:
    """The Standard Webhooks `webhook-id` of an outcome event: the same for every attempt and
    replay of it (receivers deduplicate on it), header-safe whatever the event id holds."""
    return "msg_" + _digest("webhook:" + event_id)


def unsubscribed_event_id(batch_id: str, recipient: str) -> str:
    """Id of the Unsubscribed event of a Recipient of a Batch (the same for every POST)."""
    return delivery_event_id("unsubscribed", batch_id, recipient)
