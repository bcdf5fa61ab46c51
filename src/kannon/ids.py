"""Random identifiers Kannon mints: Batch tokens, Template ids, API key ids and API key plaintexts.

The only module that draws randomness for identifiers (pure code takes the results as arguments).
Formats follow the original Kannon's so ids look the same to existing clients:

* token: 24 characters, lowercase ASCII letters and digits, starting with a letter (the shape
  of the original's cuid2 ids); the Batch id is ``msg_<token>@<domain>``
  (:func:`kannon.envelope.ids.make_batch_id`);
* Template id ``template_<token>@<domain>``, API key id ``key_<token>``;
* API key plaintext ``k_`` + 64 characters of ``[A-Za-z0-9]``;
* webhook endpoint id ``whe_<token>``, signing secret ``whsec_<base64 of 32 bytes>``.

``secrets`` rather than ``random``: API keys are credentials, and guessable Batch or Template ids
would let one tenant probe another's.
"""

from __future__ import annotations

import base64
import secrets
import string

TOKEN_LENGTH = 24
API_KEY_LENGTH = 64
_LETTERS = string.ascii_lowercase
_LOWER_ALNUM = string.ascii_lowercase + string.digits
_ALNUM = string.ascii_letters + string.digits


def new_token() -> str:
    """24 random lowercase alphanumerics, the first a letter (~123 bits)."""
    first = secrets.choice(_LETTERS)
    return first + "".join(secrets.choice(_LOWER_ALNUM) for _ in range(TOKEN_LENGTH - 1))


def new_template_id(domain: str) -> str:
    return f"template_{new_token()}@{domain}"


def new_api_key_id() -> str:
    return f"key_{new_token()}"


def new_webhook_endpoint_id() -> str:
    return f"whe_{new_token()}"


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_api_key() -> str:
    """The plaintext of a new API key (~381 bits); shown to the operator once, stored hashed."""
    return "k_" + "".join(secrets.choice(_ALNUM) for _ in range(API_KEY_LENGTH))
