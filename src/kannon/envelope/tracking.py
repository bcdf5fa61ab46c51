"""Open and click tracking of a rendered HTML body: link rewriting and the open pixel.

* Every ``<a href>`` becomes ``<tracker base>/c/<click token>`` (one token per link per
  Recipient), except links the Tracker must not or cannot redirect: empty, ``#fragment``,
  ``mailto:``, ``tel:``, ``sms:``, and the script-ish ``javascript:``/``vbscript:``/``data:``
  (a redirect to those would be refused by browsers anyway, and signing them is pointless).
  A ``data-no-track`` attribute opts a link out; the attribute is removed from the output.
* The href is HTML-entity-decoded before signing (``a?x=1&amp;y=2`` links to ``a?x=1&y=2``),
  so the redirect goes to the URL the reader would have visited.
* The open pixel goes before the first ``</body>`` (any case, optional spaces), or at the end
  when there is none, so bodies without a document skeleton are still tracked.

Tags are found by a small attribute-aware grammar (both quote styles, unquoted values,
attributes in any order, tags over several lines, any case). A tag it cannot read is left as
authored: an untracked link is better than a broken one. ``<img src>`` and other tags are never
touched.

Each channel follows its own Tracking Mode (:mod:`kannon.model.tracking`): ``off`` leaves the
links (or the body, for opens) exactly as authored; otherwise the tokens carry the mode and the
identity it allows (the address, a stand-in, or the anonymous sentinel).

Pure: tokens come from ``kannon.envelope.tokens`` with a caller-supplied key and expiry.
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Callable
from datetime import datetime

from kannon.envelope.tokens import LEGACY_MODE, TrackingKey, sign_click, sign_open
from kannon.model.tracking import TrackingMode

# Names and unquoted values may not contain "<" (browsers allow it, as a parse error): without
# that, text like "<a <a <a ..." makes every "<a" scan to the end of the body (quadratic).
_NAME = r"""[^\s"'<>/=]+"""
_UNQUOTED = r"[^\s\"'<>][^\s<>]*"
_ATTR = rf"""{_NAME}(?:\s*=\s*(?:"[^"]*"|'[^']*'|{_UNQUOTED}))?"""
# "<a" must be followed by whitespace, "/" or ">" so <abbr>, <area>, <audio> never match.
_A_TAG = re.compile(rf"<a(?=[\s/>])(?:\s+{_ATTR})*\s*/?>", re.IGNORECASE)
_ATTR_RE = re.compile(rf"""(\s+)({_NAME})(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|({_UNQUOTED})))?""")
_SCHEME_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_UNTRACKED_SCHEMES = frozenset({"mailto", "tel", "sms", "javascript", "vbscript", "data"})
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
NO_TRACK_ATTR = "data-no-track"


def tracker_base(template: str, domain: str) -> str:
    """Resolve the configured tracker base URL (``{domain}`` = tenant domain), no trailing /."""
    return template.replace("{domain}", domain).rstrip("/")


def is_trackable(url: str) -> bool:
    """True when a (decoded, stripped) href should be sent through the click redirect."""
    if not url or url.startswith("#"):
        return False
    m = _SCHEME_RE.match(url)
    return m is None or m.group(1).lower() not in _UNTRACKED_SCHEMES


def _rewrite_tag(tag: str, track: Callable[[str], str]) -> str:
    href_span: tuple[int, int] | None = None
    href_value = ""
    drop: list[tuple[int, int]] = []
    # Attributes follow each other from just after "<a" (the tag matched _A_TAG, so this walk
    # sees the same attributes). Anchored matches, not finditer: searching would retry at every
    # character of a long whitespace run, which is quadratic.
    pos = 2
    while (m := _ATTR_RE.match(tag, pos)) is not None:
        pos = m.end()
        name = m.group(2).lower()
        if name == NO_TRACK_ATTR:
            drop.append(m.span())
        elif name == "href" and href_span is None:  # HTML: the first duplicate wins
            for group in (3, 4, 5):
                if m.group(group) is not None:
                    href_span = m.span(group)
                    href_value = m.group(group)
                    break
            else:
                href_span = (-1, -1)  # bare "href": nothing to track, remember it was seen
    edits: list[tuple[int, int, str]] = [(start, end, "") for start, end in drop]
    if not drop and href_span is not None and href_span[0] >= 0:
        url = _html.unescape(href_value).strip()
        if is_trackable(url):
            edits.append((href_span[0], href_span[1], _html.escape(track(url), quote=True)))
    if not edits:
        return tag
    edits.sort()
    out: list[str] = []
    pos = 0
    for start, end, text in edits:
        out.append(tag[pos:start])
        out.append(text)
        pos = end
    out.append(tag[pos:])
    return "".join(out)


def rewrite_links(html: str, track: Callable[[str], str]) -> str:
    """Replace each trackable ``<a href>`` with ``track(decoded url)``; see module doc."""
    if "<a" not in html and "<A" not in html:
        return html
    return _A_TAG.sub(lambda m: _rewrite_tag(m.group(0), track), html)


def pixel_tag(pixel_url: str) -> str:
    """Return the invisible 1x1 image that reports an open."""
    src = _html.escape(pixel_url, quote=True)
    return f'<img src="{src}" width="1" height="1" alt="" style="display:none"/>'


def insert_open_pixel(html: str, pixel_url: str) -> str:
    """Insert the pixel before the first ``</body>`` (case-insensitive), else append it."""
    tag = pixel_tag(pixel_url)
    m = _BODY_END.search(html)
    if m is None:
        return html + tag
    return f"{html[: m.start()]}{tag}{html[m.start() :]}"


def apply_tracking(
    html: str,
    *,
    base_url: str,
    key: TrackingKey,
    batch_id: str,
    recipient: str,
    expires_at: datetime,
    links: TrackingMode = LEGACY_MODE,
    opens: TrackingMode = LEGACY_MODE,
    link_identity: str | None = None,
    open_identity: str | None = None,
) -> str:
    """Rewrite links and add the open pixel for one Recipient, each as its mode says.

    ``base_url`` is already resolved (see ``tracker_base``). The tokens name ``*_identity``
    (default: ``recipient``), which the caller derives from the mode. The same URL appearing
    twice gets the same token (tokens are deterministic), so it is signed once.
    """
    if links.tracks:
        signed: dict[str, str] = {}
        who = link_identity or recipient

        def track(url: str) -> str:
            link = signed.get(url)
            if link is None:
                token = sign_click(key, batch_id, who, url, expires_at, links)
                link = signed[url] = f"{base_url}/c/{token}"
            return link

        html = rewrite_links(html, track)
    if opens.tracks:
        token = sign_open(key, batch_id, open_identity or recipient, expires_at, opens)
        html = insert_open_pixel(html, f"{base_url}/o/{token}")
    return html


def tracked_hrefs(html: str) -> list[str]:
    """The decoded URLs of every link ``rewrite_links`` would track in ``html``, in order (one
    entry per link, repeats included): what the Envelope size estimate needs to know."""
    found: list[str] = []

    def record(url: str) -> str:
        found.append(url)
        return url

    rewrite_links(html, record)
    return found
