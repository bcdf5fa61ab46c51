"""DKIM signing (RFC 6376) of built Envelopes, with OpenSSL through ``cryptography``.

Owns: loading a Domain's keys, relaxed/relaxed canonicalisation, the DKIM-Signature header, and
generating new key pairs with their DNS TXT value.

* Two algorithms: ``rsa-sha256`` (RSA-2048) and ``ed25519-sha256`` (RFC 8463: the Ed25519
  signature of the SHA-256 digest of the signed data; the DNS ``p=`` is the raw 32-byte public
  key). A message is signed by every key the Domain signs with, RSA first
  (:func:`sign_all`): a verifier that knows only RSA still finds its signature at the top.
* ``c=relaxed/relaxed``; ``From``, ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` are
  oversigned (listed once more than they occur, even when absent) so nobody can add a second
  one after signing and have it shown or acted on instead (RFC 8058 §4 asks for the latter two
  to be signed).
* The private key is parsed once per ``DkimSigner`` (parsing PEM/DER costs more than a signature);
  one RSA-2048 signature is ~0.6 ms with OpenSSL, against ~8 ms with dkimpy's pure-Python RSA
  (dkimpy is used only by the tests, to verify independently).
* Relaxed body canonicalisation, RFC 6376 §3.4.4: whitespace runs become one SP, whitespace at
  line ends goes, empty lines at the end go, a non-empty body gets a final CRLF, and an empty
  (or all-blank-lines) body canonicalises to nothing. A final line with no CRLF also loses its
  trailing whitespace (the RFC's reading; dkimpy keeps it): Envelopes always end in CRLF, so
  the two readings never differ for what we send.

Pure except ``generate_dkim_keypair``, which is random by nature (it asks the OS via OpenSSL).
The signing time ``t=`` comes from the caller's ``now``. Private keys are stored as base64:
PKCS#1 DER for RSA (the original's format), the raw 32-byte seed for Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from datetime import datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

Header = tuple[str, str]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"
ALGORITHMS = (RSA_SHA256, ED25519_SHA256)  # also the order signatures appear in a message
_KEY_TYPE = {RSA_SHA256: "rsa", ED25519_SHA256: "ed25519"}
_ED25519_SEED = 32

# What we sign, in this order, when present. Content-Type and MIME-Version pin the structure;
# X-Pool-Message-ID ties the signature to the Batch.
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "X-Pool-Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
DEFAULT_OVERSIGNED: tuple[str, ...] = ("From", "List-Unsubscribe", "List-Unsubscribe-Post")
_MIN_KEY_BITS = 1024  # RFC 8301 §3.2: verifiers must refuse smaller keys
_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_CHANGE = re.compile(rb"\t[ \t]*| [ \t]+")
_FOLDING = re.compile(rb"\r?\n")
_SELECTOR_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]*)(?:\.[A-Za-z0-9_-]+)*")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*)(?:\.[A-Za-z0-9_-]+)*\.?")
_SIG_LINE = 72


def relaxed_header(name: str, value: str) -> bytes:
    """Relaxed header canonical form (RFC 6376 §3.4.2) of one field, CRLF-terminated."""
    # surrogateescape: sign_message hands over foreign header bytes decoded that way.
    raw = _FOLDING.sub(b"", value.encode("utf-8", "surrogateescape"))
    raw = _WSP_RUN.sub(b" ", raw).strip(b" ")
    return name.strip().lower().encode("ascii") + b":" + raw + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """Relaxed body canonical form (RFC 6376 §3.4.4) of a CRLF body."""
    # Written for speed (it runs over every message): the regex only fires where something
    # changes (a tab or 2+ blanks), after which trailing whitespace can only be " " + CRLF.
    if b"\t" in body or b"  " in body:
        body = _WSP_CHANGE.sub(b" ", body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    if end == 0:
        return b""
    # A final line without CRLF loses its trailing blank too (it is a line end once CRLF is added).
    return body[:end].rstrip(b" ") + b"\r\n"


def _load_private_key(private_key: str | bytes) -> PrivateKey:
    data = private_key.encode("ascii") if isinstance(private_key, str) else private_key
    data = data.strip()
    key: object
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            # Stored keys are base64: PKCS#1 DER (RSA; PKCS#8 DER loads too) or a raw Ed25519
            # seed of 32 bytes, which no DER key is.
            der = base64.b64decode(b"".join(data.split()), validate=True)
            if len(der) == _ED25519_SEED:
                key = ed25519.Ed25519PrivateKey.from_private_bytes(der)
            else:
                key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"cannot load DKIM private key: {exc}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("DKIM private key must be RSA or Ed25519")
    if key.key_size < _MIN_KEY_BITS:
        raise ValueError(f"DKIM key of {key.key_size} bits is too small")
    return key


def _fold_names(names: Sequence[str]) -> str:
    """Join h= names with ":", folding after a colon (FWS is allowed there) to keep lines short."""
    out = names[0] if names else ""
    line = 3 + len(out)  # "\th=" + first name
    for name in names[1:]:
        if line + 1 + len(name) > _SIG_LINE:
            out += ":\r\n\t" + name
            line = 1 + len(name)
        else:
            out += ":" + name
            line += 1 + len(name)
    return out


def _fold_b64(value: str) -> str:
    return "\r\n\t".join(value[i : i + _SIG_LINE] for i in range(0, len(value), _SIG_LINE))


class DkimSigner:
    """Signs messages for one Domain with one selector; the key is parsed once, here."""

    __slots__ = ("_key", "_oversigned", "_signed", "algorithm", "domain", "selector")

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key: str | bytes,
        *,
        signed_headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
        oversigned: Sequence[str] = DEFAULT_OVERSIGNED,
    ) -> None:
        if _DOMAIN_RE.fullmatch(domain) is None:
            raise ValueError(f"not a DKIM signing domain: {domain!r}")
        if _SELECTOR_RE.fullmatch(selector) is None:
            raise ValueError(f"not a DKIM selector: {selector!r}")
        self.domain = domain
        self.selector = selector
        self._key = _load_private_key(private_key)
        self.algorithm = (
            ED25519_SHA256 if isinstance(self._key, ed25519.Ed25519PrivateKey) else RSA_SHA256
        )
        self._signed = tuple(h.lower() for h in signed_headers)
        self._oversigned = frozenset(h.lower() for h in oversigned)

    def __repr__(self) -> str:  # never show the key
        return (
            f"DkimSigner(domain={self.domain!r}, selector={self.selector!r}, "
            f"algorithm={self.algorithm!r})"
        )

    def public_key_b64(self) -> str:
        """The DNS ``p=`` value: base64 SubjectPublicKeyInfo DER (RSA) or the raw key (Ed25519)."""
        return _public_b64(self._key)

    def sign(
        self, headers: Sequence[Header], body: bytes, now: datetime, body_hash: str | None = None
    ) -> Header:
        """Return the ``("DKIM-Signature", value)`` field for a message.

        ``headers`` are ``(name, value)`` pairs in message order, ``value`` being exactly the
        text after the colon (folding included); ``body`` is the CRLF body after the blank line
        (``body_hash``, when given, is its relaxed SHA-256 in base64, saving a second pass).
        The result is meant to be prepended to the header block.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        by_name: dict[str, list[Header]] = {}
        for name, value in headers:
            by_name.setdefault(name.strip().lower(), []).append((name, value))
        h_names: list[str] = []
        canon: list[bytes] = []
        for name in self._signed:
            instances = by_name.get(name, [])
            # RFC 6376 §5.4.2: repeated names take instances from the bottom up.
            for inst_name, inst_value in reversed(instances):
                h_names.append(name)
                canon.append(relaxed_header(inst_name, inst_value))
            if name in self._oversigned:
                # Names no instance (also when the field is absent): contributes nothing to the
                # hash, and makes any field of that name added later break the signature.
                h_names.append(name)
        if body_hash is None:
            body_hash = relaxed_body_hash(body)
        unsigned = (
            f" v=1; a={self.algorithm}; c=relaxed/relaxed; d={self.domain}; s={self.selector};\r\n"
            f"\tt={int(now.timestamp())};\r\n\th={_fold_names(h_names)};\r\n"
            f"\tbh={body_hash};\r\n\tb="
        )
        # The signature field itself is hashed last, with an empty b= and no trailing CRLF.
        canon.append(relaxed_header("DKIM-Signature", unsigned)[:-2])
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            # RFC 8463 §3: Ed25519 (PureEdDSA) over the SHA-256 digest, not over the data.
            signature = self._key.sign(hashlib.sha256(b"".join(canon)).digest())
        else:
            signature = self._key.sign(b"".join(canon), padding.PKCS1v15(), hashes.SHA256())
        return "DKIM-Signature", unsigned + _fold_b64(base64.b64encode(signature).decode("ascii"))

    def sign_message(self, message: bytes, now: datetime) -> bytes:
        """Return ``message`` (CRLF line ends) with a DKIM-Signature header prepended."""
        head, sep, body = message.partition(b"\r\n\r\n")
        if not sep:
            head, body = message.removesuffix(b"\r\n"), b""
        fields: list[Header] = []
        for line in head.decode("utf-8", "surrogateescape").split("\r\n"):
            if line[:1] in (" ", "\t") and fields:
                name, value = fields[-1]
                fields[-1] = (name, f"{value}\r\n{line}")
            elif ":" in line:
                name, _, value = line.partition(":")
                fields.append((name, value))
            else:
                raise ValueError(f"not a header line: {line[:40]!r}")
        name, value = self.sign(fields, body, now)
        return f"{name}:{value}\r\n".encode("ascii") + message


def relaxed_body_hash(body: bytes) -> str:
    """The ``bh=`` value: base64 SHA-256 of the relaxed canonical body."""
    return base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")


def sign_all(
    signers: Sequence[DkimSigner], headers: Sequence[Header], body: bytes, now: datetime
) -> list[Header]:
    """One DKIM-Signature per signer, in message order: RSA ones first (then in the order
    given). Each signs the same header fields, none signs another signature."""
    body_hash = relaxed_body_hash(body)
    ordered = sorted(signers, key=lambda s: ALGORITHMS.index(s.algorithm))
    return [signer.sign(headers, body, now, body_hash) for signer in ordered]


def _public_b64(key: PrivateKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def generate_dkim_keypair(bits: int = 2048) -> tuple[str, str]:
    """Return a new ``(private base64 PKCS#1 DER, public base64 SubjectPublicKeyInfo DER)``.

    The one impure function of the envelope package: key generation needs fresh randomness,
    which OpenSSL draws from the OS. The formats are those the `domains` table stores.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1 RSAPrivateKey
        serialization.NoEncryption(),
    )
    return base64.b64encode(private_der).decode("ascii"), _public_b64(key)


def generate_ed25519_keypair() -> tuple[str, str]:
    """Return a new ``(private base64 32-byte seed, public base64 32-byte key)`` (RFC 8463).

    Random by nature, like ``generate_dkim_keypair``.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed).decode("ascii"), _public_b64(key)


def generate_keypair(algorithm: str) -> tuple[str, str]:
    """A new ``(private, public)`` pair of `algorithm` in the stored formats."""
    if algorithm == RSA_SHA256:
        return generate_dkim_keypair()
    if algorithm == ED25519_SHA256:
        return generate_ed25519_keypair()
    raise ValueError(f"unknown DKIM algorithm {algorithm!r}")


def dns_txt_value(public_b64: str, algorithm: str = RSA_SHA256) -> str:
    """The TXT record value to publish at ``<selector>._domainkey.<domain>``.

    For RSA-2048 it is ~410 characters: DNS carries it as several <=255-byte strings of one
    record (zone files and dnsmasq need it split; resolvers join the strings back). Ed25519's
    fits one string.
    """
    compact = "".join(public_b64.split())
    try:
        base64.b64decode(compact, validate=True)
    except binascii.Error:
        raise ValueError("public key is not base64") from None
    if algorithm not in _KEY_TYPE:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}")
    return f"v=DKIM1; k={_KEY_TYPE[algorithm]}; p={compact}"
