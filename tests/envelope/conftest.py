"""Fixtures for the envelope tests: one DKIM key pair per session and a dkimpy verifier."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple

import dkim
import pytest

from kannon.envelope import BatchSpec, DkimSigner, RecipientPart, dns_txt_value
from tests.envelope.envelope_testdata import (
    BATCH_ID,
    BOUNCE_SECRET,
    DOMAIN,
    NOW,
    SELECTOR,
    TRACKING_KEY,
)


@pytest.fixture(scope="session")
def signer(dkim_keypair: tuple[str, str]) -> DkimSigner:
    return DkimSigner(DOMAIN, SELECTOR, dkim_keypair[0])


@pytest.fixture(scope="session")
def dkim_verify(dkim_keypair: tuple[str, str]) -> Callable[[bytes], bool]:
    """Verify with dkimpy, answering the DNS lookup with our published TXT record only."""
    txt = dns_txt_value(dkim_keypair[1]).encode()
    expected = f"{SELECTOR}._domainkey.{DOMAIN}.".encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return txt if name == expected else b""

    def verify(message: bytes) -> bool:
        return bool(dkim.verify(message, dnsfunc=dnsfunc))

    return verify


class Spec(NamedTuple):
    """The arguments of `build_envelope`: `build_envelope(*spec)`."""

    batch: BatchSpec
    part: RecipientPart
    dkim: DkimSigner


_PART_FIELDS = {f.name for f in dataclasses.fields(RecipientPart)}


@pytest.fixture
def make_spec(signer: DkimSigner) -> Callable[..., Spec]:
    """A Batch's spec and a Recipient's part with sensible defaults; keyword arguments override
    any field of either (and `dkim`, the signer)."""

    def make(**overrides: object) -> Spec:
        values: dict[str, Any] = {
            "batch_id": BATCH_ID,
            "domain": DOMAIN,
            "sender_email": "news@k.example.com",
            "sender_alias": "Kannon News",
            "subject": "Hello {{ name }}",
            "html": "<html><body><p>Hi {{ name }}</p></body></html>",
            "recipient": "bob@example.org",
            "fields": {"name": "Bob"},
            "tracker_base_url": "https://stats.{domain}",
            "tracking_key": TRACKING_KEY,
            "token_expires_at": NOW + timedelta(days=90),
            "bounce_secret": BOUNCE_SECRET,
            "now": NOW,
            "boundary_seed": b"seed0001",
        }
        values.update(overrides)
        dkim = values.pop("dkim", signer)
        assert isinstance(dkim, DkimSigner)
        part = {k: v for k, v in values.items() if k in _PART_FIELDS}
        batch = {k: v for k, v in values.items() if k not in _PART_FIELDS}
        return Spec(BatchSpec(**batch), RecipientPart(**part), dkim)

    return make
