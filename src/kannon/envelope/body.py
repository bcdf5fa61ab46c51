"""The HTML body of a Batch, compiled once: what ``render_html`` then ``apply_tracking`` would
produce for each Recipient, without reading the whole document again per Recipient (ADR 0056).

The HTML of one Batch is the same for every Recipient up to its fields and its tracking tokens.
``compile_html`` reads the template once: its ``{{ }}`` slots, its ``<a>`` tags (which ones are
tracked, where the href is, which attributes ``data-no-track`` drops) and the place of the open
pixel, and keeps literal text between them. ``BodyPlan.render`` then only fills the slots
(escaped exactly as ``render_html`` does), signs tokens and joins the pieces.

The result is the same string as the reference path (``render_html`` + ``apply_tracking``), by
construction for what the plan accepts and by falling back otherwise:

* The document is analysed with every slot replaced by a marker character that the tag grammar
  reads like any letter. A plan is refused (``compile_html`` returns None: the reference path
  builds every Recipient of that HTML) when a field's value could change the document's
  structure whatever it is: a slot inside an ``<a>`` tag but outside a quoted attribute value, a
  slot right after ``<``, ``<a`` or a prefix of ``</body>``, an ``<a`` that starts no tag the
  grammar accepts (a value could complete it), or the first ``</body>`` inside an ``<a>`` tag.
* Per Recipient, a value that holds ``<``, ``>``, ``"`` or ``'`` could open a tag, close one or
  end a quoted value: ``render`` returns None and the caller takes the reference path for that
  Recipient. Escaped values never hold them; raw (``{{{ }}}``) values and the literal text of an
  unknown placeholder may.

``tests/envelope/test_body_plan.py`` compares both paths on generated documents and values.
"""

from __future__ import annotations

import functools
import html as _html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kannon.envelope.render import _PLACEHOLDER
from kannon.envelope.tracking import (
    _A_TAG,
    _ATTR_RE,
    _BODY_END,
    NO_TRACK_ATTR,
    is_trackable,
    pixel_tag,
)

# Compiled documents a process keeps: a build worker works through one Batch at a time, so a
# few cover interleaved Batches; documents may be large, so not many.
PLAN_CACHE = 8

# Stands in for every slot during the analysis: not whitespace, quote, "<", ">", "/" or "=",
# so the tag grammar reads it as part of a name or a value, never as structure.
_MARK = "\ue000"
_A_START = re.compile(r"<a(?=[\s/>])", re.IGNORECASE)
# Literal text a slot must not follow: a value could complete "<a" or "</body>" with it.
_OPEN_BEFORE_SLOT = re.compile(r"(?:<a|<(?:/(?:b(?:o(?:d(?:y\s*)?)?)?)?)?)\Z", re.IGNORECASE)
_UNSAFE_VALUE = re.compile(r"[<>\"']")

# Piece kinds of a compiled document.
_TEXT = 0  # literal text
_SLOT = 1  # the value of slot i
_LINK = 2  # a tracked href: a `_Link`
_PIXEL = 3  # where the open pixel goes


Piece = tuple[int, Any]
"""A kind (``_TEXT``, ``_SLOT``, ``_LINK``, ``_PIXEL``) and its argument."""


@dataclass(frozen=True, slots=True)
class _Link:
    """An href the tracker rewrites: its value as authored, as text and slot pieces. ``url`` is
    the decoded URL when the value has no slot (then known to be trackable), else None."""

    pieces: tuple[Piece, ...]
    url: str | None


@dataclass(frozen=True, slots=True)
class BodyPlan:
    """A compiled Batch HTML; see the module doc."""

    names: tuple[str, ...]
    """Per slot: the field name it reads."""
    raw: tuple[bool, ...]
    """Per slot: ``{{{ }}}`` (inserted raw) rather than ``{{ }}`` (escaped)."""
    literals: tuple[str, ...]
    """Per slot: the placeholder as written, which stays when the Recipient has no such field."""
    literal_safe: bool
    """No placeholder text holds a character a value may not (see ``_UNSAFE_VALUE``)."""
    plain: tuple[Piece, ...]
    """The document with links as authored."""
    linked: tuple[Piece, ...]
    """The document with tracked links rewritten and ``data-no-track`` attributes dropped."""

    def values(self, fields: Mapping[str, str]) -> list[str] | None:
        """Per slot, the text ``render_html`` puts there; None when one could change the
        document's structure (the caller then takes the reference path)."""
        names = self.names
        if not fields:  # render_html leaves every placeholder as written
            return list(self.literals) if self.literal_safe else None
        out: list[str] = []
        escaped: dict[str, str] = {}
        for i, name in enumerate(names):
            value = fields.get(name)
            if value is None:
                value = self.literals[i]
                if not self.literal_safe and _UNSAFE_VALUE.search(value):
                    return None
            elif self.raw[i]:
                if _UNSAFE_VALUE.search(value):
                    return None
            else:
                done = escaped.get(name)
                if done is None:
                    done = escaped[name] = _html.escape(value, quote=True)
                value = done
            out.append(value)
        return out

    def render(
        self,
        fields: Mapping[str, str],
        track: Callable[[str], str] | None = None,
        pixel_url: Callable[[], str] | None = None,
    ) -> str | None:
        """``render_html`` of the template, then, as ``apply_tracking`` would: links rewritten to
        ``track(url)`` when ``track`` is given, the pixel of ``pixel_url()`` added when given
        (called after every link is tracked, as ``apply_tracking`` signs them). None: use the
        reference path for this Recipient."""
        values = self.values(fields)
        if values is None:
            return None
        out: list[str] = []
        pixel_at = -1
        for kind, arg in self.linked if track is not None else self.plain:
            if kind == _TEXT:
                out.append(arg)
            elif kind == _SLOT:
                out.append(values[arg])
            elif kind == _LINK:
                assert track is not None
                out.append(_track_href(arg, values, track))
            elif pixel_url is not None:
                pixel_at = len(out)
                out.append("")
        if pixel_url is not None:
            out[pixel_at] = pixel_tag(pixel_url())
        return "".join(out)


def _track_href(link: _Link, values: Sequence[str], track: Callable[[str], str]) -> str:
    """What ``tracking._rewrite_tag`` puts in place of one href value."""
    if link.url is not None:
        return _html.escape(track(link.url), quote=True)
    value = "".join(arg if kind == _TEXT else values[arg] for kind, arg in link.pieces)
    url = _html.unescape(value).strip()
    if is_trackable(url):
        return _html.escape(track(url), quote=True)
    return value


@functools.lru_cache(maxsize=PLAN_CACHE)
def compile_html(template: str) -> BodyPlan | None:
    """The compiled form of a Batch's HTML, or None when a field could change its structure
    (see the module doc). Cached per process (``PLAN_CACHE`` documents, least recently used)."""
    slots = list(_PLACEHOLDER.finditer(template))
    # The document with one marker per slot, and where each marker sits in it.
    parts: list[str] = []
    marks: list[int] = []
    size = 0
    pos = 0
    for m in slots:
        text = template[pos : m.start()]
        parts.append(text)
        size += len(text)
        marks.append(size)
        parts.append(_MARK)
        size += 1
        pos = m.end()
    parts.append(template[pos:])
    doc = "".join(parts)

    for mark in marks:
        if _OPEN_BEFORE_SLOT.search(doc, max(0, mark - 64), mark) or _follows_body_end(doc, mark):
            return None

    tags = [(m.start(), m.end()) for m in _A_TAG.finditer(doc)]
    starts = {start for start, _ in tags}
    tag_at = 0
    for m in _A_START.finditer(doc):
        while tag_at < len(tags) and tags[tag_at][1] <= m.start():
            tag_at += 1
        inside = tag_at < len(tags) and tags[tag_at][0] <= m.start()
        if not inside and m.start() not in starts:
            return None  # an "<a" the grammar rejects: a value could make it a tag

    body_end = _BODY_END.search(doc)
    pixel = len(doc) if body_end is None else body_end.start()
    if any(start < pixel < end for start, end in tags):
        return None

    # Per tag: the edits tracking makes (dropped spans, the href to rewrite), in doc positions.
    edits: list[tuple[int, int, _Link | None]] = []
    for start, end in tags:
        tag_edits = _tag_edits(doc[start:end], start, marks)
        if tag_edits is None:
            return None
        edits += tag_edits

    builder = _Pieces(doc, marks)
    plain: list[Piece] = []
    builder.emit(plain, 0, pixel)
    plain.append((_PIXEL, None))
    builder.emit(plain, pixel, len(doc))

    linked: list[Piece] = []
    cur = 0
    pixel_done = False
    for start, end, link in edits:
        if not pixel_done and pixel <= start:
            builder.emit(linked, cur, pixel)
            linked.append((_PIXEL, None))
            cur, pixel_done = pixel, True
        builder.emit(linked, cur, start)
        if link is not None:
            linked.append((_LINK, link))
        cur = end
    if not pixel_done:
        builder.emit(linked, cur, pixel)
        linked.append((_PIXEL, None))
        cur = pixel
    builder.emit(linked, cur, len(doc))

    literals = tuple(m.group(0) for m in slots)
    return BodyPlan(
        names=tuple(
            (m.group(1) if m.group(1) is not None else m.group(2)).strip(" ") for m in slots
        ),
        raw=tuple(m.group(1) is not None for m in slots),
        literals=literals,
        literal_safe=not any(_UNSAFE_VALUE.search(text) for text in literals),
        plain=_merge(plain),
        linked=_merge(linked),
    )


def _follows_body_end(doc: str, mark: int) -> bool:
    """True when the slot at ``mark`` follows ``</body`` and whitespace only."""
    end = mark
    while end > 0 and doc[end - 1].isspace():
        end -= 1
    return end != mark and doc[max(0, end - 6) : end].lower() == "</body"


def _tag_edits(
    tag: str,
    offset: int,
    marks: Sequence[int],
) -> list[tuple[int, int, _Link | None]] | None:
    """The edits ``tracking._rewrite_tag`` makes to this tag (same walk), in document positions:
    dropped spans (None) or the href value to track (a ``_Link``). None when a slot of the tag
    lies outside every quoted attribute value."""
    href_span: tuple[int, int] | None = None
    drop: list[tuple[int, int]] = []
    quoted: list[tuple[int, int]] = []
    pos = 2
    while (m := _ATTR_RE.match(tag, pos)) is not None:
        pos = m.end()
        for group in (3, 4):
            if m.group(group) is not None:
                quoted.append(m.span(group))
        name = m.group(2).lower()
        if name == NO_TRACK_ATTR:
            drop.append(m.span())
        elif name == "href" and href_span is None:
            for group in (3, 4, 5):
                if m.group(group) is not None:
                    href_span = m.span(group)
                    break
            else:
                href_span = (-1, -1)
    for mark in marks:
        local = mark - offset
        if 0 <= local < len(tag) and not any(a <= local < b for a, b in quoted):
            return None
    if drop:
        return [(offset + start, offset + end, None) for start, end in sorted(drop)]
    if href_span is None or href_span[0] < 0:
        return []
    start, end = offset + href_span[0], offset + href_span[1]
    pieces: list[Piece] = []
    cur = start
    for i, mark in enumerate(marks):
        if start <= mark < end:
            if cur < mark:
                pieces.append((_TEXT, tag[cur - offset : mark - offset]))
            pieces.append((_SLOT, i))
            cur = mark + 1
    if cur < end:
        pieces.append((_TEXT, tag[cur - offset : end - offset]))
    if any(kind == _SLOT for kind, _ in pieces):
        return [(start, end, _Link(tuple(pieces), None))]
    url = _html.unescape(tag[href_span[0] : href_span[1]]).strip()
    if not is_trackable(url):
        return []
    return [(start, end, _Link(tuple(pieces), url))]


class _Pieces:
    """Cuts a stretch of the marked document into text and slot pieces."""

    def __init__(self, doc: str, marks: Sequence[int]) -> None:
        self.doc = doc
        self.marks = marks

    def emit(self, out: list[Piece], start: int, end: int) -> None:
        cur = start
        for i, mark in enumerate(self.marks):
            if start <= mark < end:
                if cur < mark:
                    out.append((_TEXT, self.doc[cur:mark]))
                out.append((_SLOT, i))
                cur = mark + 1
        if cur < end:
            out.append((_TEXT, self.doc[cur:end]))


def _merge(pieces: list[Piece]) -> tuple[Piece, ...]:
    """Adjacent text pieces joined (fewer appends per Recipient)."""
    out: list[Piece] = []
    for kind, arg in pieces:
        if kind == _TEXT and out and out[-1][0] == _TEXT:
            out[-1] = (_TEXT, str(out[-1][1]) + str(arg))
        else:
            out.append((kind, arg))
    return tuple(out)
