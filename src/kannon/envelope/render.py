"""Template field substitution: the one home of the ``{{ name }}`` / ``{{{ name }}}`` syntax.

Rules (ADR 0007):

* HTML: ``{{ name }}`` becomes ``html.escape(value, quote=True)``; ``{{{ name }}}`` inserts the
  value raw (the sender vouches for it being HTML).
* Text (the Subject): both forms insert the value raw; header encoding happens later, in mime.
* Spaces around the name are optional and may be any number. Unknown names stay literal, so a
  typo is visible in the delivered mail instead of silently vanishing.
* Keys and values are plain text: ``$1``, ``\\1`` and regex metacharacters mean nothing (the
  original treated values as regex replacement templates, a mistake we do not copy).
* Single pass: a value that itself contains ``{{ other }}`` is inserted as is, never expanded,
  so one Recipient's data cannot pull in another field.

Speed matters (one render per Delivery): one compiled regex finds every placeholder and one
``re.sub`` with a lookup function replaces them, whatever the number of fields.
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Mapping

# Triple braces come first in the alternation so "{{{ x }}}" is never read as "{" + "{{ x }}".
# Names cannot contain braces; anything else (dots, dashes, "$", inner spaces) is allowed and
# looked up verbatim once the spaces around it are stripped. Stripping in code rather than with
# " *" around a lazy group keeps the regex linear: "{{" followed by thousands of spaces made
# that form backtrack for minutes.
_PLACEHOLDER = re.compile(r"\{\{\{([^{}]*)\}\}\}|\{\{([^{}]*)\}\}")


def _substitute(template: str, fields: Mapping[str, str], escape: bool) -> str:
    if not fields or "{{" not in template:
        return template

    def replace(m: re.Match[str]) -> str:
        raw_name = m.group(1)
        if raw_name is not None:
            value = fields.get(raw_name.strip(" "))
            return m.group(0) if value is None else value
        value = fields.get(m.group(2).strip(" "))
        if value is None:
            return m.group(0)
        return _html.escape(value, quote=True) if escape else value

    return _PLACEHOLDER.sub(replace, template)


def render_html(template: str, fields: Mapping[str, str]) -> str:
    """Fill ``fields`` into HTML: ``{{ x }}`` escaped, ``{{{ x }}}`` raw, unknown names kept."""
    return _substitute(template, fields, escape=True)


def render_text(template: str, fields: Mapping[str, str]) -> str:
    """Fill ``fields`` into plain text (the Subject): every placeholder form inserts raw."""
    return _substitute(template, fields, escape=False)


def apply_global_fields(template_html: str, fields: Mapping[str, str]) -> str:
    """Bake a Batch's global fields into its template HTML (same rules as ``render_html``).

    Placeholders not named in ``fields`` survive, so per-Recipient fields are still filled at
    dispatch time. Caveat of running two passes at two times: a global value that contains
    ``{{ name }}`` becomes a placeholder of the stored template and is filled at dispatch.
    """
    return _substitute(template_html, fields, escape=True)


def placeholder_names(template: str) -> set[str]:
    """Return every field name referenced by ``template`` (both brace forms)."""
    return {
        (m.group(1) if m.group(1) is not None else m.group(2)).strip(" ")
        for m in _PLACEHOLDER.finditer(template)
    }


def placeholder_counts(template: str) -> dict[str, tuple[int, int]]:
    """Return, per field name, how often ``template`` uses it as ``{{ x }}`` and as ``{{{ x }}}``
    (in that order): what a value of that field adds to a rendered document."""
    counts: dict[str, tuple[int, int]] = {}
    for m in _PLACEHOLDER.finditer(template):
        if m.group(1) is not None:
            name = m.group(1).strip(" ")
            escaped, raw = counts.get(name, (0, 0))
            counts[name] = (escaped, raw + 1)
        else:
            name = m.group(2).strip(" ")
            escaped, raw = counts.get(name, (0, 0))
            counts[name] = (escaped + 1, raw)
    return counts
