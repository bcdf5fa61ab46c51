"""Finding email addresses in bounce text and headers, and normalising them for comparison.

Deliberately looser than RFC 5321 (bounces quote encoded-word local parts, trailing dots, angle
brackets), but strict enough to skip Message-IDs, IP literals and URLs' "user@host" fragments.
"""

from __future__ import annotations

import binascii
import email.header
import re
from typing import Final

_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]"
# Dots allowed inside, not at either end.
LOCAL: Final = rf"{_ATOM}(?:[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.\-]{{0,126}}{_ATOM})?"
DOMAIN: Final = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}|\[[0-9.:A-Fa-f]+\]"
)
ADDRESS: Final = rf"(?:{LOCAL}|=\?[^\s?]+\?[BbQq]\?[^\s?]*\?=)@(?:{DOMAIN})"
# An address starts where a run of local-part characters starts. Without the lookbehind on all
# of them, a long run of "!" or "#" was tried from each of its positions, 128 characters ahead
# each time (3.5 s per MB of such text, holding the GIL).
ADDRESS_RE: Final = re.compile(rf"(?<![\w.!#$%&'*+/=?^`{{|}}~\-]){ADDRESS}(?![\w\-])")


def normalize(address: str) -> str:
    """Lower-case an address, decoding an RFC 2047 encoded-word local part first (lower-casing
    the base64 of "=?utf-8?B?...?=" would turn it into a different address)."""
    local, at, domain = address.rpartition("@")
    if at and local.startswith("=?") and local.endswith("?="):
        try:
            parts = email.header.decode_header(local)
            local = "".join(
                chunk.decode(charset or "utf-8", "replace") if isinstance(chunk, bytes) else chunk
                for chunk, charset in parts
            )
        except (ValueError, LookupError, binascii.Error):
            pass
    return f"{local}{at}{domain}".lower()


def extract_address(text: str) -> str:
    """The first address in `text`, normalised; "" when there is none."""
    match = ADDRESS_RE.search(text)
    return normalize(match.group(0)) if match else ""


def all_addresses(text: str) -> list[str]:
    """Every address in `text`, normalised, in order, without repeats."""
    seen: dict[str, None] = {}
    for match in ADDRESS_RE.finditer(text):
        seen.setdefault(normalize(match.group(0)), None)
    return list(seen)


def is_plausible_recipient(address: str) -> bool:
    """False for things shaped like addresses that are really message or tracking identifiers."""
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return False
    # Message-IDs: long hex/dotted tokens ("14a3e1b4b5a.10b1a4c5610175.8588...@host").
    return not (len(local) > 40 and re.fullmatch(r"[0-9a-f.\-]+", local))
