"""ARF feedback reports (RFC 5965) as mailbox providers' feedback loops send them.

The reports are the real ones of shared/testdata (sisimai's set-of-emails), made to be about a
message of ours: their own parts stay as the provider wrote them, and what names the original is
replaced by what a provider would have seen of our message — its bounce address (MAIL FROM) as
Original-Mail-From and as the Return-Path the receiving MTA added, its header block as the
returned message.

* arf-15, arf-21: Return Path's FBL for webmail providers (Original-Mail-From, the whole
  returned message);
* arf-17: abusix (Original-Rcpt-To, a returned message without Return-Path);
* arf-25: Rackspace through Return Path (recipient hashed away, returned message redacted; the
  header block is put back here).
"""

from __future__ import annotations

import re

from tests.shared_data import bounce_testdata

ARF_SAMPLES = ("arf-15.eml", "arf-21.eml", "arf-17.eml", "arf-25.eml")


def _boundary(head: str) -> str:
    match = re.search(r'boundary="?([^";\r\n]+)"?', head, re.IGNORECASE)
    assert match is not None, "sample has no MIME boundary"
    return match.group(1)


def _set_field(block: str, name: str, value: str | None) -> str:
    """`block` (report fields) with every `name:` line removed and, unless None, one added."""
    lines = [line for line in block.split("\n") if not line.lower().startswith(name.lower() + ":")]
    while lines and not lines[-1].strip():
        lines.pop()
    if value is not None:
        lines.append(f"{name}: {value}")
    return "\n".join(lines) + "\n\n"


def arf_report(
    sample: str,
    *,
    bounce_address: str,
    original_headers: bytes,
    original_rcpt_to: str | None = None,
    redact_to: bool = False,
    feedback_type: str | None = None,
    original_mail_from: bool = True,
    return_path: bool = True,
) -> bytes:
    """The real report `sample` about our message (CRLF line endings, ready for DATA).

    `original_rcpt_to`: the Original-Rcpt-To field (None: left out). `redact_to`: the returned
    message's To: is redacted, as many providers do. `feedback_type`: replaces the report's.
    """
    raw = (bounce_testdata() / "emails" / sample).read_bytes().decode("utf-8")
    raw = raw.replace("\r\n", "\n")
    head, _, body = raw.partition("\n\n")
    delimiter = f"--{_boundary(head)}"
    chunks = body.split(delimiter)
    original = original_headers.decode().replace("\r\n", "\n")
    if redact_to:
        original = re.sub(r"(?m)^To: .*$", "To: redacted@example.org", original)
    if return_path:
        original = f"Return-Path: <{bounce_address}>\n{original}"
    for index, chunk in enumerate(chunks):
        part_head, sep, part_body = chunk.partition("\n\n")
        ctype = part_head.lower()
        if "message/feedback-report" in ctype:
            fields = _set_field(
                part_body,
                "Original-Mail-From",
                f"<{bounce_address}>" if original_mail_from else None,
            )
            fields = _set_field(fields, "Original-Rcpt-To", original_rcpt_to)
            if feedback_type is not None:
                fields = _set_field(fields, "Feedback-Type", feedback_type)
            chunks[index] = part_head + sep + fields
        elif "message/rfc822" in ctype or "rfc822-headers" in ctype:
            chunks[index] = part_head + sep + original + "\n\nThanks for your order.\n\n"
    message = head + "\n\n" + delimiter.join(chunks)
    return message.replace("\n", "\r\n").encode("utf-8")
