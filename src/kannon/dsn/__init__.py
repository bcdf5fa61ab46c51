"""Inbound bounce (DSN) parsing and classification: `parse_message(raw) -> DsnReport`.

Pure: no I/O, no clock. Understands RFC 3464 delivery-status reports, RFC 3463 status codes,
SMTP reply codes in diagnostic text, the plain-text bounce layouts of the common MTAs, ARF
feedback reports (RFC 5965), auto-replies (RFC 3834) and Amazon SES JSON notifications.
"""

from kannon.dsn.model import REASONS, BouncedRecipient, DsnReport, Feedback, Kind, is_hard_bounce
from kannon.dsn.parser import parse_message

__all__ = [
    "REASONS",
    "BouncedRecipient",
    "DsnReport",
    "Feedback",
    "Kind",
    "is_hard_bounce",
    "parse_message",
]
