"""RFC 8058 one-click unsubscribe: the URL template a caller gives, and the two header fields.

Two sources of the URL (ADR 0034):

* the caller's ``one_click_unsubscribe.url_template`` (per Batch): an ``https`` URL whose
  ``{{ name }}`` placeholders are filled per Recipient with its fields, each value
  percent-encoded so it cannot change the URL's structure; ``{{ email }}`` is the Recipient's
  address unless a field of that name says otherwise;
* Kannon's own endpoint, when the caller gives none and the Domain enables it:
  ``<tracker base>/u/<unsubscribe token>``, served by the Tracker.

The message then carries ``List-Unsubscribe: <url>`` and ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click`` (RFC 8058 §3.1), both covered by the DKIM signature (§4), which
also over-signs them so nobody can add a second one.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from kannon.envelope.render import placeholder_names, render_text

LIST_UNSUBSCRIBE = "List-Unsubscribe"
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe-Post"
ONE_CLICK = "List-Unsubscribe=One-Click"
EMAIL_FIELD = "email"
MAX_TEMPLATE = 2000
# Characters a URL in a header may not hold (RFC 3986 excludes them; the angle brackets and
# whitespace would end or fold the header field).
_FORBIDDEN = re.compile(r"[\s<>\"\x00-\x1f\x7f]")


def check_url_template(template: str) -> set[str]:
    """Check a caller's URL template; return the field names it uses. ValueError says why not.

    The template must be an absolute https URL with a host (RFC 8058 §3.1), without whitespace,
    angle brackets or control characters; placeholders may appear anywhere after the host.
    """
    if not template.strip():
        raise ValueError("must not be empty")
    if len(template) > MAX_TEMPLATE:
        raise ValueError(f"longer than {MAX_TEMPLATE} characters")
    names = placeholder_names(template)
    # Checked with placeholders replaced by a harmless value: the structure must stand alone.
    sample = render_text(template, dict.fromkeys(names, "x"))
    if _FORBIDDEN.search(sample):
        raise ValueError("contains whitespace, quotes, angle brackets or control characters")
    try:
        parts = urlsplit(sample)
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if parts.scheme.lower() != "https":
        raise ValueError("must be an https URL (RFC 8058)")
    if not parts.hostname or "{{" in template.partition("//")[2].split("/", 1)[0]:
        raise ValueError("must name a host, without placeholders in it")
    return names


def render_url(template: str, fields: Mapping[str, str], email: str) -> str:
    """The Recipient's URL: placeholders filled with percent-encoded values.

    ValueError when a placeholder has no value (intake rejects such Recipients first).
    """
    values = {EMAIL_FIELD: email, **fields}
    missing = placeholder_names(template) - values.keys()
    if missing:
        raise ValueError(f"unsubscribe URL: no value for {sorted(missing)}")
    return render_text(template, {k: quote(v, safe="") for k, v in values.items()})


def builtin_url(base_url: str, token: str) -> str:
    """Kannon's own endpoint for one Recipient (``base_url`` resolved, no trailing slash)."""
    return f"{base_url}/u/{token}"


def headers(url: str) -> list[tuple[str, str]]:
    """The two RFC 8058 header fields, values as they follow the colon."""
    if _FORBIDDEN.search(url):
        raise ValueError("unsubscribe URL contains characters a header cannot carry")
    return [(LIST_UNSUBSCRIBE, f" <{url}>"), (LIST_UNSUBSCRIBE_POST, f" {ONE_CLICK}")]
