"""Hostile reports for the SMTPServer tests: messages shaped to make a naive bounce parser spend
quadratic time, all within what SMTP lets a client send (lines of at most 998 octets).

Each one is addressed to a valid bounce address: anyone who ever got mail from Kannon has one.
"""

from __future__ import annotations

from dataclasses import dataclass

LINE = 998  # RFC 5321's longest text line, CRLF excluded; aiosmtpd refuses longer ones


@dataclass(frozen=True)
class Hostile:
    name: str
    content_type: str
    body: bytes
    transfer_encoding: str = "8bit"

    def message(self, bounce_address: str) -> bytes:
        head = (
            "From: MAILER-DAEMON@mx.far.example (Mail Delivery System)\r\n"
            f"To: {bounce_address}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            "Message-ID: <hostile@mx.far.example>\r\n"
            "MIME-Version: 1.0\r\n"
            f"Content-Type: {self.content_type}; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: {self.transfer_encoding}\r\n"
            "\r\n"
        )
        return head.encode() + self.body


def _lines(unit: str, size: int, *, soft_breaks: bool = False) -> bytes:
    """``unit`` repeated in lines of at most LINE octets, ``size`` bytes in all.

    With ``soft_breaks`` each line ends in a quoted-printable soft break ("=" CRLF), so the
    decoded text is one line of ``size`` characters.
    """
    width = (LINE - 1 if soft_breaks else LINE) // len(unit) * len(unit)
    end = b"=\r\n" if soft_breaks else b"\r\n"
    line = (unit * (width // len(unit))).encode() + end
    return line * max(1, size // len(line))


_PREAMBLE = b"Your message could not be delivered to <stranger@far.example>.\r\n\r\n"

KIB = 1024

HOSTILE = [
    # Unclosed <script> tags: each one sends a lazy ".*?</script>" to the end of the text.
    Hostile("html <script 60 KiB", "text/html", _lines("<script", 60 * KIB)),
    # "<" without ">": each one sends "<[^>]+>" to the end of the text.
    Hostile("html < 120 KiB", "text/html", _lines("<", 120 * KIB)),
    Hostile("html <script 120 KiB", "text/html", _lines("<script", 120 * KIB)),
    Hostile("html <script 1 MiB", "text/html", _lines("<script", 1024 * KIB)),
    # One failed recipient that is not ours, then a megabyte of address-like characters: the
    # fallback that looks for our recipient among every address in the message reads them all.
    Hostile("plain ! 1 MB", "text/plain", _PREAMBLE + _lines("!", 1_000_000)),
    # The same, decoded into a single 1 MB line (quoted-printable soft breaks).
    Hostile(
        "plain ! one line 1 MB",
        "text/plain",
        _PREAMBLE + _lines("!", 1_000_000, soft_breaks=True),
        "quoted-printable",
    ),
    # Blank lines: "^\s*" at the start of every line crosses all the following ones.
    Hostile("plain blank lines 1 MB", "text/plain", _PREAMBLE + b"\r\n" * 500_000),
]
