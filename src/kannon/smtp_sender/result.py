"""What one delivery attempt of an Envelope came to, and how that becomes an outcome event.

Pure: the SMTP and DNS code reports a `SendResult`; `detail_for` turns it into Delivered,
Bounced or Errored following DESIGN.md §3 "Sender":

* 2xx → Delivered.
* 5xx to MAIL/RCPT/DATA → Bounced, permanent.
* 4xx to MAIL/RCPT/DATA → Errored (the Dispatcher retries) — or Bounced(permanent=False) when
  the Envelope says it was the last attempt (`should_retry` false).
* A reply refusing the *session* (greeting, EHLO, STARTTLS, relay AUTH) says nothing about the
  Recipient, so it is always Errored with its code: never bounce an address because a server
  blocked us or our relay credentials are wrong.
* No answer at all (DNS failure, refused or dropped connection, timeout) → Errored with code 0,
  whatever `should_retry` says: the Dispatcher decides between another try and Failed.
* Decided locally without asking a server (null MX, malformed address) → Bounced, permanent.

A Bounced event carries the reply's status, reason and hard/soft verdict from
`kannon.dsn.reply.classify_reply` (ADR 0029): `hard_bounce` — the address is dead and may be
suppressed — only for a confident address-level 5xx such as "550 5.1.1 User unknown" at RCPT,
never for policy, content or reputation refusals.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kannon.dsn.reply import classify_reply
from kannon.model.outcome import Bounced, Delivered, Errored

NO_ANSWER_CODE = 0


class Kind(enum.Enum):
    DELIVERED = "delivered"
    REFUSED = "refused"
    """A remote server answered a transaction command (MAIL/RCPT/DATA) with an error."""
    SESSION_REFUSED = "session-refused"
    """A remote server answered with an error before any transaction command."""
    NO_ANSWER = "no-answer"
    LOCAL_BOUNCE = "local-bounce"
    DEFERRED = "deferred"
    """Not tried: delivery shaping holds the Envelope back (`delay` seconds; ADR 0038)."""


@dataclass(frozen=True)
class SendResult:
    kind: Kind
    code: int
    message: str
    possibly_delivered: bool = False
    """True when a server accepted the message, or may have (connection lost after DATA).

    Only then must a redelivery of the same Envelope not send again: the send guard is released
    otherwise, and no next MX is tried after an ambiguous end.
    """
    remote: str = ""
    """Which server answered ("mx.example.org[192.0.2.1]"), for logs."""
    tls: bool = False
    command: str = ""
    """The transaction command a REFUSED reply answered: MAIL, RCPT or DATA ("" otherwise)."""
    delay: float = 0.0
    """DEFERRED: seconds before the Envelope should come back."""

    @classmethod
    def delivered(cls, code: int, message: str, remote: str, *, tls: bool = False) -> SendResult:
        return cls(Kind.DELIVERED, code, message, True, remote, tls)

    @classmethod
    def refused(
        cls, code: int, message: str, remote: str, *, tls: bool = False, command: str = ""
    ) -> SendResult:
        return cls(Kind.REFUSED, code, message, False, remote, tls, command)

    @classmethod
    def session_refused(cls, code: int, message: str, remote: str) -> SendResult:
        return cls(Kind.SESSION_REFUSED, code, message, False, remote)

    @classmethod
    def no_answer(
        cls, message: str, remote: str = "", *, possibly_delivered: bool = False
    ) -> SendResult:
        return cls(Kind.NO_ANSWER, NO_ANSWER_CODE, message, possibly_delivered, remote)

    @classmethod
    def local_bounce(cls, code: int, message: str) -> SendResult:
        return cls(Kind.LOCAL_BOUNCE, code, message)

    @classmethod
    def deferred(cls, delay: float, reason: str) -> SendResult:
        return cls(Kind.DEFERRED, NO_ANSWER_CODE, reason, delay=delay)

    @property
    def answered(self) -> bool:
        """A remote server gave an SMTP reply (as opposed to silence or a local decision)."""
        return self.kind in (Kind.DELIVERED, Kind.REFUSED, Kind.SESSION_REFUSED)


def bounced(result: SendResult, *, permanent: bool) -> Bounced:
    """The Bounced event of a refusal, classified (status, reason, hard or soft)."""
    verdict = classify_reply(result.code, result.message, command=result.command)
    return Bounced(
        permanent=permanent,
        code=result.code,
        message=result.message,
        status=verdict.status,
        reason=verdict.reason,
        hard_bounce=permanent and verdict.hard_bounce,
        remote_mta=result.remote,
    )


def detail_for(result: SendResult, should_retry: bool) -> Delivered | Bounced | Errored:
    if result.kind is Kind.DELIVERED:
        return Delivered()
    if result.kind is Kind.LOCAL_BOUNCE:
        return bounced(result, permanent=True)
    if result.kind is Kind.REFUSED:
        if 500 <= result.code < 600:
            return bounced(result, permanent=True)
        if 400 <= result.code < 500 and not should_retry:
            return bounced(result, permanent=False)
        return Errored(code=result.code, message=result.message)
    # SESSION_REFUSED and NO_ANSWER say nothing about the Recipient; a REFUSED reply outside
    # 4xx/5xx is a protocol oddity, retried rather than trusted.
    return Errored(code=result.code, message=result.message)
