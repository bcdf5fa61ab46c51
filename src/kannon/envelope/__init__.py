"""The pure build of an Envelope: render, tracking, headers/MIME, DKIM, bounce address, tokens.

No I/O, no clock reads, no randomness read here (the one exception is DKIM key generation): the
caller passes ``now``, ids, keys and MIME boundary seeds in, so every output is table-testable.
Each concept has one module; this package root re-exports the public API.
"""

from kannon.envelope.bounce import BounceAddress, make_bounce_address, parse_bounce_address
from kannon.envelope.build import BatchSpec, Envelope, RecipientPart, build_envelope
from kannon.envelope.dkim import DkimSigner, dns_txt_value, generate_dkim_keypair
from kannon.envelope.ids import make_batch_id, make_email_id, parse_email_id
from kannon.envelope.render import apply_global_fields, render_html, render_text
from kannon.envelope.tokens import (
    ClickClaim,
    OpenClaim,
    TrackingKey,
    sign_click,
    sign_open,
    verify_click,
    verify_open,
    verify_token,
)

__all__ = [
    "BatchSpec",
    "BounceAddress",
    "ClickClaim",
    "DkimSigner",
    "Envelope",
    "OpenClaim",
    "RecipientPart",
    "TrackingKey",
    "apply_global_fields",
    "build_envelope",
    "dns_txt_value",
    "generate_dkim_keypair",
    "make_batch_id",
    "make_bounce_address",
    "make_email_id",
    "parse_bounce_address",
    "parse_email_id",
    "render_html",
    "render_text",
    "sign_click",
    "sign_open",
    "verify_click",
    "verify_open",
    "verify_token",
]
