"""DKIM: relaxed canonicalisation against dkimpy, signatures verified by dkimpy, key handling."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import dkim.canonicalization
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kannon.envelope.dkim import (
    DkimSigner,
    dns_txt_value,
    relaxed_body,
    relaxed_header,
)
from tests.envelope.envelope_testdata import DOMAIN, NOW, SELECTOR

BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"hello\r\n",
    b"hello\r\n\r\n\r\n",
    b"trailing spaces   \r\ntabs\t\t\r\n",
    b"in  line \t runs\r\n",
    b" \t \r\n",
    b"a\r\n \r\n\t\r\nb\r\n \r\n\r\n",
    b"  leading kept as one space\r\n",
    b"no final crlf",
    b"x" * 2000 + b"\r\n",
]


@pytest.mark.parametrize("body", BODIES)
def test_relaxed_body_matches_dkimpy(body: bytes) -> None:
    assert relaxed_body(body) == dkim.canonicalization.Relaxed.canonicalize_body(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", b""),
        (b"\r\n\r\n", b""),  # empty lines at the end go, even all of them
        (b" \r\n", b""),
        (b"a  b \r\n\r\n", b"a b\r\n"),
        (b"abc", b"abc\r\n"),  # a CRLF is added to a non-empty body
        # RFC reading for a final line without CRLF: its trailing blank is a line-end blank.
        # (dkimpy keeps it; Envelopes always end in CRLF, so this never arises for them.)
        (b"abc \t", b"abc\r\n"),
    ],
)
def test_relaxed_body_rules(body: bytes, expected: bytes) -> None:
    assert relaxed_body(body) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Subject", " Hello   world  "),
        ("SUBJECT ", "\tfolded\r\n  across\r\n\tlines "),
        ("From", " =?utf-8?b?Wm/Dqw==?= <a@b.c>"),
        ("X-Empty", ""),
        ("To", " a@b.c,\r\n b@c.d"),
    ],
)
def test_relaxed_header_matches_dkimpy(name: str, value: str) -> None:
    [(n, v)] = dkim.canonicalization.Relaxed.canonicalize_headers([(name.encode(), value.encode())])
    assert relaxed_header(name, value) == n + b":" + v


RAW_MESSAGES = {
    "plain": b"From: a@k.example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n",
    "trailing whitespace lines": (
        b"From: a@k.example.com\r\nSubject:   spaced    out   \r\n\r\n"
        b"line one   \r\n\tindented\t \r\n   \r\n\r\n\r\n"
    ),
    "empty body": b"From: a@k.example.com\r\nSubject: empty\r\n\r\n",
    "blank lines only": b"From: a@k.example.com\r\nSubject: blank\r\n\r\n\r\n\r\n",
    "folded headers": (
        b"From: a@k.example.com\r\nTo: one@example.org,\r\n\ttwo@example.org\r\n"
        b"Subject: a\r\n  folded\r\n   subject\r\nCc: c@example.org\r\n\r\nbody\r\n"
    ),
    "non-ascii": ("From: Zoë <a@k.example.com>\r\nSubject: ünïcödé\r\n\r\nGrüße 東京\r\n".encode()),
}


@pytest.mark.parametrize("name", sorted(RAW_MESSAGES))
def test_sign_message_verifies_with_dkimpy(
    name: str, signer: DkimSigner, dkim_verify: Callable[[bytes], bool]
) -> None:
    signed = signer.sign_message(RAW_MESSAGES[name], NOW)
    assert dkim_verify(signed)


def test_signature_tags(signer: DkimSigner) -> None:
    signed = signer.sign_message(RAW_MESSAGES["folded headers"], NOW)
    header = signed.split(b"\r\n\r\n")[0].decode()
    unfolded = re.sub(r"\r\n[ \t]+", "", header.split("\r\nFrom:")[0])
    tags = dict(
        t.strip().split("=", 1) for t in unfolded.removeprefix("DKIM-Signature:").split(";")
    )
    assert tags["v"] == "1"
    assert tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert tags["d"] == DOMAIN
    assert tags["s"] == SELECTOR
    assert tags["t"] == str(int(NOW.timestamp()))
    assert tags["h"] == "from:from:to:cc:subject:list-unsubscribe:list-unsubscribe-post"
    assert len(base64.b64decode(tags["b"])) == 256  # RSA-2048
    assert max(len(line) for line in signed.split(b"\r\n")) <= 78


def test_tampering_breaks_the_signature(
    signer: DkimSigner, dkim_verify: Callable[[bytes], bool]
) -> None:
    signed = signer.sign_message(RAW_MESSAGES["plain"], NOW)
    assert dkim_verify(signed)
    assert not dkim_verify(signed.replace(b"Subject: hi", b"Subject: HI"))
    assert not dkim_verify(signed.replace(b"hello\r\n", b"hellO\r\n"))
    # whitespace-only changes survive relaxed canonicalisation
    assert dkim_verify(signed.replace(b"Subject: hi", b"Subject:   hi  "))
    assert dkim_verify(signed.replace(b"hello\r\n", b"hello   \r\n\r\n"))


def test_oversigning_blocks_added_instances(
    dkim_keypair: tuple[str, str], dkim_verify: Callable[[bytes], bool]
) -> None:
    """Verifiers pick the bottom-most instance per h= entry, so an instance added on top slips
    through unless the name is listed once more than it occurs. dkimpy refuses any message with
    two From fields outright, so the mechanism is shown with Subject; From uses the same code
    path (its h= entry is doubled: see test_signature_tags)."""

    def add_subject_on_top(signed: bytes) -> bytes:
        return b"Subject: forged\r\n" + signed

    message = RAW_MESSAGES["plain"]
    over = DkimSigner(DOMAIN, SELECTOR, dkim_keypair[0], oversigned=("From", "Subject"))
    plain = DkimSigner(DOMAIN, SELECTOR, dkim_keypair[0], oversigned=())
    assert dkim_verify(over.sign_message(message, NOW))
    assert not dkim_verify(add_subject_on_top(over.sign_message(message, NOW)))
    assert dkim_verify(add_subject_on_top(plain.sign_message(message, NOW)))
    # An unsigned header may still be added freely.
    assert dkim_verify(b"X-Added: fine\r\n" + over.sign_message(message, NOW))


def test_public_key_and_dns_value(dkim_keypair: tuple[str, str], signer: DkimSigner) -> None:
    private_b64, public_b64 = dkim_keypair
    assert signer.public_key_b64() == public_b64
    assert dns_txt_value(public_b64) == f"v=DKIM1; k=rsa; p={public_b64}"
    assert dns_txt_value(public_b64[:40] + "\n " + public_b64[40:]).endswith(public_b64)
    der = base64.b64decode(private_b64)
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert der[:2] == b"\x30\x82"  # PKCS#1 RSAPrivateKey is a bare SEQUENCE...
    assert b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01" not in der[:32]  # ...without PKCS#8's OID
    with pytest.raises(ValueError):
        dns_txt_value("not base64!")


def _pem(private_b64: str, fmt: serialization.PrivateFormat) -> bytes:
    key = serialization.load_der_private_key(base64.b64decode(private_b64), password=None)
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@pytest.mark.parametrize("form", ["b64_pkcs1", "b64_pkcs1_wrapped", "pem_pkcs1", "pem_pkcs8"])
def test_key_forms_sign_identically(
    form: str, dkim_keypair: tuple[str, str], dkim_verify: Callable[[bytes], bool]
) -> None:
    private_b64 = dkim_keypair[0]
    forms: dict[str, str | bytes] = {
        "b64_pkcs1": private_b64,
        "b64_pkcs1_wrapped": "\n".join(
            private_b64[i : i + 64] for i in range(0, len(private_b64), 64)
        ),
        "pem_pkcs1": _pem(private_b64, serialization.PrivateFormat.TraditionalOpenSSL),
        "pem_pkcs8": _pem(private_b64, serialization.PrivateFormat.PKCS8).decode(),
    }
    key = forms[form]
    signer = DkimSigner(DOMAIN, SELECTOR, key)
    assert dkim_verify(signer.sign_message(RAW_MESSAGES["plain"], NOW))


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        DkimSigner(DOMAIN, SELECTOR, "bm90IGEga2V5")
    with pytest.raises(ValueError):
        DkimSigner(DOMAIN, SELECTOR, "%%% not base64 %%%")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="RSA"):
        DkimSigner(DOMAIN, SELECTOR, ec_pem)


@pytest.mark.parametrize(
    ("domain", "selector"), [("bad domain", "smtp"), (DOMAIN, "s;x=1"), (DOMAIN, "")]
)
def test_bad_domain_or_selector(domain: str, selector: str, dkim_keypair: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        DkimSigner(domain, selector, dkim_keypair[0])


def test_repr_hides_key(signer: DkimSigner) -> None:
    assert repr(signer) == (
        f"DkimSigner(domain={DOMAIN!r}, selector={SELECTOR!r}, algorithm='rsa-sha256')"
    )
