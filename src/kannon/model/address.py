"""Recipient and sender address validation (RFC 5321 mailbox syntax, whole-string match).

Policy, stricter than the RFC where real mail systems are: a dot-atom local part of ASCII
characters only (no quoted local parts, no SMTPUTF8), a domain name of at least two labels whose
top-level label is alphabetic or an IDNA A-label, no address literals. Case is preserved in the
local part and folded in the domain; internationalised domains are converted to their A-label form.

:func:`canonical_recipient` is the one spelling a Recipient is stored, deduplicated and sent under
(ADR 0020): domain lower-cased, IDNA A-label, trailing dot dropped; invisible format characters
(zero-width space, joiners, bidi marks, soft hyphen, BOM) removed. The local part keeps its case:
RFC 5321 lets the receiving system decide whether ``Ada`` and ``ada`` differ.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import idna

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TLD = re.compile(r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})")

MAX_LOCAL = 64
MAX_DOMAIN = 253
MAX_ADDRESS = 254


class InvalidAddress(ValueError):
    """The address is not one Kannon will send to; the message says why."""


@dataclass(frozen=True)
class Address:
    local: str
    domain: str  # lower-case, A-label form

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def ascii_domain(name: str) -> str:
    """Lower-case A-label form of a name, one trailing dot dropped (DNS is case-insensitive and
    `example.com.` is the same name); raises idna.IDNAError for an invalid non-ASCII name."""
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        name = idna.encode(name, uts46=True).decode("ascii")
    return name.lower()


# ZERO WIDTH NON-JOINER / JOINER are legitimate inside some IDNA labels (RFC 5892 CONTEXTJ, e.g.
# Persian); in a domain they are left for IDNA to accept or refuse.
_JOINERS = frozenset("\u200c\u200d")


def _without_invisible(text: str, keep: frozenset[str] = frozenset()) -> str:
    """`text` without Unicode format characters (category Cf), except those in `keep`."""
    return "".join(ch for ch in text if ch in keep or unicodedata.category(ch) != "Cf")


def canonical_recipient(value: str) -> str:
    """The canonical spelling of a Recipient address (see the module docstring).

    Never raises: an address that stays invalid is returned in its cleaned form for the
    Validator to reject with a reason. ``value`` is expected trimmed.
    """
    local, at, domain = value.rpartition("@")
    if not at:
        return value
    if value.isascii():  # nearly every address: what ascii_domain does, without the call
        return f"{local}@{domain.removesuffix('.').lower()}"
    # Pasted lists carry these invisibly; no mailbox contains them (local parts are ASCII).
    local = _without_invisible(local)
    domain = _without_invisible(domain, _JOINERS)
    try:
        domain = ascii_domain(domain)
    except UnicodeError:  # idna.IDNAError is one; the Validator gives the reason
        domain = domain.removesuffix(".").lower()
    return f"{local}@{domain}"


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form of a domain name, or InvalidAddress."""
    if not domain:
        raise InvalidAddress("the domain is empty")
    if domain.startswith("[") or domain.endswith("]"):
        raise InvalidAddress("address literals are not accepted")
    try:
        domain = ascii_domain(domain)
    except idna.IDNAError as exc:
        raise InvalidAddress(f"the domain is not a valid internationalised name: {exc}") from None
    if len(domain) > MAX_DOMAIN:
        raise InvalidAddress("the domain is longer than 253 characters")
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidAddress("the domain has no top-level domain")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidAddress(f"the domain label {label!r} is not a valid host name label")
    if not _TLD.fullmatch(labels[-1]):
        raise InvalidAddress(f"{labels[-1]!r} is not a valid top-level domain")
    return domain


def parse_address(value: str) -> Address:
    """Validate the whole string as a mailbox; raises InvalidAddress with a reason."""
    if not value:
        raise InvalidAddress("the address is empty")
    if len(value) > MAX_ADDRESS * 4:
        raise InvalidAddress("the address is too long")
    if any(ch.isspace() for ch in value):
        raise InvalidAddress("the address contains whitespace")
    local, at, domain = value.rpartition("@")
    if not at:
        raise InvalidAddress("the address has no @")
    if not local:
        raise InvalidAddress("the local part is empty")
    if local.startswith('"'):
        raise InvalidAddress("quoted local parts are not accepted")
    if not local.isascii():
        raise InvalidAddress("the local part has non-ASCII characters (SMTPUTF8 is not supported)")
    if "@" in local:
        raise InvalidAddress("the address has more than one @")
    if not _DOT_ATOM.fullmatch(local):
        raise InvalidAddress("the local part has characters or dots that are not allowed")
    if len(local) > MAX_LOCAL:
        raise InvalidAddress("the local part is longer than 64 characters")
    normalized = normalize_domain(domain)
    if len(local) + 1 + len(normalized) > MAX_ADDRESS:
        raise InvalidAddress("the address is longer than 254 characters")
    return Address(local, normalized)


def is_valid_address(value: str) -> bool:
    try:
        parse_address(value)
    except InvalidAddress:
        return False
    return True
