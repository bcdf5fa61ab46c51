"""RFC 5322 / MIME serialisation of an Envelope: header fields, encodings, body parts.

Owns every byte layout decision of a built message:

* Header fields are produced as ``(name, value)`` pairs where ``value`` is exactly what follows
  the colon (leading space and folding included), so DKIM signs the very bytes that are sent.
* No header value may contain CR, LF or NUL: ``ValueError`` (the API refuses them earlier; this is
  defence in depth against header injection through template fields).
* Unstructured text (Subject, display names) is written raw when it is printable ASCII, otherwise
  as RFC 2047 ``=?utf-8?b?...?=`` words of at most 75 characters, folded between words.
* Address lists are folded after commas so lines stay short however many ``headers.to`` there are.
* Bodies: text/html UTF-8 quoted-printable (76-char lines), attachments base64; every line ends in
  CRLF and none exceeds 998 octets (RFC 5322 §2.1.1).
* Multipart boundaries start with ``=_``: that sequence can occur in neither quoted-printable
  (``=`` is always followed by hex or a line break) nor base64 output, so a boundary can never
  collide with content; the caller's random seed only makes it unique per message.

Pure, with one caveat: the stdlib ``mimetypes`` module reads the system's mime.types once per
process on first use. Guesses here come from a private table (Python's built-in defaults plus a
few common attachment types), never the system's, so results are the same on every machine.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import functools
import mimetypes
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Sequence
from datetime import datetime
from email.utils import format_datetime

Header = tuple[str, str]

CRLF = "\r\n"
_FOLD_AT = 78  # RFC 5322 §2.1.1 SHOULD; the hard limit is 998
_FORBIDDEN = re.compile(r"[\r\n\x00]")
# Printable ASCII and tab; "=?" would be taken for the start of an encoded word by readers.
_PLAIN_TEXT = re.compile(r"[\t\x20-\x7e]*")
_ATEXT_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")
_B64_CHUNK = 42  # bytes per encoded word: 56 base64 chars + 12 = 68, fits "Subject: " in 78
_FROM_LINE = re.compile(rb"^From ", re.MULTILINE)
_FILENAME_MAX = 200
_PARAM_CHUNK = 50  # RFC 2231 continuation piece: keeps " filename*0*=utf-8''..." under 78

_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
    "br": "application/x-brotli",
}


def check_header_value(name: str, value: str) -> None:
    """Raise ValueError when ``value`` could break out of its header field."""
    if _FORBIDDEN.search(value):
        raise ValueError(f"{name} header value contains CR, LF or NUL")


def _needs_encoding(text: str) -> bool:
    return _PLAIN_TEXT.fullmatch(text) is None or "=?" in text


def encode_words(text: str) -> str:
    """RFC 2047 B-encode ``text`` as UTF-8 words, folded between words, never splitting a char."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > _B64_CHUNK and chunk:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    if chunk:
        words.append("".join(chunk))
    encoded = [
        "=?utf-8?b?" + base64.b64encode(w.encode("utf-8")).decode("ascii") + "?=" for w in words
    ]
    # Whitespace between adjacent encoded words is dropped by decoders, so folding there is free;
    # every word is short enough to sit on any line, the first included.
    return (CRLF + " ").join(encoded)


def _fold_words(text: str, used: int) -> str:
    """Fold plain text at existing spaces so lines stay under 78 chars when possible."""
    words = text.split(" ")
    out = [words[0]]
    line = used + len(words[0])
    for word in words[1:]:
        # Never fold before an empty word: a folded line of only whitespace is not allowed.
        if word and line + 1 + len(word) > _FOLD_AT and line > used:
            out.append(CRLF + " " + word)
            line = 1 + len(word)
        else:
            out.append(" " + word)
            line += 1 + len(word)
    return "".join(out)


def unstructured(name: str, text: str) -> Header:
    """Return an unstructured header field (Subject): raw when plain ASCII, else RFC 2047."""
    check_header_value(name, text)
    if not text:
        return name, ""
    used = len(name) + 2
    longest = max((len(w) for w in text.split(" ")), default=0)
    if _needs_encoding(text) or used + longest > 900:
        return name, " " + encode_words(text)
    return name, " " + _fold_words(text, used)


def _display_name(alias: str) -> str:
    # Only non-ASCII forces encoding: a long ASCII name stays one quoted string (limit 998).
    if _needs_encoding(alias) or len(alias) > 900:
        return encode_words(alias)
    if _ATEXT_PHRASE.fullmatch(alias) and alias.strip() == alias and "  " not in alias:
        return alias
    escaped = alias.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def mailbox(name: str, alias: str, address: str) -> Header:
    """Return a From-style header: ``Alias <address>``, or the bare address without alias."""
    check_header_value(name, alias)
    check_header_value(name, address)
    if not alias:
        return name, " " + address
    display = _display_name(alias)
    nl = display.rfind("\n")
    last_line = len(display) - nl if nl >= 0 else len(name) + 2 + len(display)
    sep = CRLF + " " if last_line + len(address) + 3 > _FOLD_AT else " "
    return name, f" {display}{sep}<{address}>"


def address_list(name: str, addresses: Iterable[str]) -> Header:
    """Return an address-list header (To, Cc): comma separated, folded after commas."""
    parts: list[str] = []
    line = len(name) + 1
    for i, raw in enumerate(addresses):
        check_header_value(name, raw)
        address = raw.strip()
        if i == 0:
            parts.append(" " + address)
            line += 1 + len(address)
        elif line + 2 + len(address) > _FOLD_AT:
            parts.append("," + CRLF + " " + address)
            line = 1 + len(address)
        else:
            parts.append(", " + address)
            line += 2 + len(address)
    if not parts:
        raise ValueError(f"{name} header needs at least one address")
    return name, "".join(parts)


def simple(name: str, value: str) -> Header:
    """Return a header whose value is ASCII we generated ourselves (ids, dates, types)."""
    check_header_value(name, value)
    return name, " " + value


def date_header(now: datetime) -> Header:
    """Return the Date header for ``now`` (must be timezone-aware)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return "Date", " " + format_datetime(now)


def serialise_headers(headers: Sequence[Header]) -> bytes:
    """Return the header block (each field CRLF-terminated, no blank line)."""
    return "".join(f"{name}:{value}{CRLF}" for name, value in headers).encode("utf-8")


def quoted_printable(text: str) -> bytes:
    """UTF-8 quoted-printable with CRLF line ends, ending in CRLF.

    Input line endings (LF, CRLF or lone CR) are normalised first. A line starting with
    ``From `` gets its F encoded: some MTAs turn such lines into ``>From``, breaking DKIM.
    """
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    # The regex tries every position of the body; a substring search finds the rare case first.
    if encoded.startswith(b"From ") or b"\nFrom " in encoded:
        encoded = _FROM_LINE.sub(b"=46rom ", encoded)
    if encoded and not encoded.endswith(b"\n"):
        encoded += b"\n"
    return encoded.replace(b"\n", b"\r\n")


def base64_body(data: bytes) -> bytes:
    """Base64 in 76-char CRLF lines."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


# Decoding rounds before giving up on a name that keeps yielding encoded words (nested encoding).
_DECODE_ROUNDS = 4


def decode_encoded_words(text: str) -> str:
    """``text`` with RFC 2047 encoded words (``=?utf-8?b?...?=``) decoded, as mail clients show
    filenames. Nested encodings are decoded too; what still looks like one after a few rounds, or
    cannot be decoded, loses its ``=?`` so that no client decodes it either."""
    for _ in range(_DECODE_ROUNDS):
        if "=?" not in text:
            return text
        try:
            decoded = str(email.header.make_header(email.header.decode_header(text)))
        except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
            break
        if decoded == text:
            return text
        text = decoded
    return text.replace("=?", "")


def sanitise_filename(filename: str) -> str:
    """Return a safe attachment filename: no path, control/format chars, quotes or backslashes.

    Format characters (Unicode Cf) include the right-to-left override used to disguise
    ``invoice\\u202efdp.exe`` as ``invoiceexe.pdf``. Encoded words are decoded first: clients
    decode ``=?utf-8?b?aW52b2ljZeKArmZkcC5leGU=?=`` in a filename parameter and would show the
    override hidden inside. Empty results become ``attachment``; long names are shortened
    keeping the extension.
    """
    name = unicodedata.normalize("NFC", decode_encoded_words(filename))
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(
        ch
        for ch in name
        if ch not in "\"'" and unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
    )
    name = name.strip().lstrip(".").strip()
    if not name:
        return "attachment"
    if len(name) > _FILENAME_MAX:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: _FILENAME_MAX - len(ext) - 1].rstrip() + "." + ext
        else:
            name = name[:_FILENAME_MAX].rstrip()
    return name


# Common attachment types Python's built-in table lacks (it predates OOXML and friends).
_EXTRA_TYPES = {
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".epub": "application/epub+zip",
    ".7z": "application/x-7z-compressed",
    ".rar": "application/vnd.rar",
    ".zst": "application/zstd",
    ".ics": "text/calendar",
    ".vcf": "text/vcard",
    ".md": "text/markdown",
    ".log": "text/plain",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".msg": "application/vnd.ms-outlook",
    ".p7s": "application/pkcs7-signature",
    ".pem": "application/x-pem-file",
    ".m4a": "audio/mp4",
    ".ogg": "audio/ogg",
}


@functools.cache
def _mime_table() -> mimetypes.MimeTypes:
    # A fresh instance holds only the built-in defaults, whatever /etc/mime.types says.
    table = mimetypes.MimeTypes()
    for ext, ctype in _EXTRA_TYPES.items():
        table.add_type(ctype, ext, strict=True)
    return table


def guess_content_type(filename: str) -> str:
    """Content type from the extension (Python's built-in table), else application/octet-stream."""
    ctype, encoding = _mime_table().guess_type(filename, strict=False)
    if encoding is not None:
        # "x.tar.gz" is a gzip file to the reader's mail client, not a tar file.
        return _ENCODING_TYPES.get(encoding, "application/octet-stream")
    return ctype or "application/octet-stream"


def _param(name: str, value: str) -> str:
    """A MIME parameter (``; name="value"``), RFC 2231-encoded (and split) when non-ASCII."""
    if _PLAIN_TEXT.fullmatch(value) and len(value) < 200:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f';{CRLF} {name}="{escaped}"'
    encoded = urllib.parse.quote(value, safe="", encoding="utf-8")
    if len(encoded) <= _PARAM_CHUNK:
        return f";{CRLF} {name}*=utf-8''{encoded}"
    # RFC 2231 §3 continuations; never split inside a %XX escape.
    pieces: list[str] = []
    start = 0
    while start < len(encoded):
        end = min(start + _PARAM_CHUNK, len(encoded))
        pct = encoded.rfind("%", end - 2, end)
        if pct != -1 and end < len(encoded):
            end = pct
        pieces.append(encoded[start:end])
        start = end
    first = f";{CRLF} {name}*0*=utf-8''{pieces[0]}"
    rest = "".join(f";{CRLF} {name}*{i}*={p}" for i, p in enumerate(pieces[1:], start=1))
    return first + rest


def attachment_part(filename: str, data: bytes) -> tuple[list[Header], bytes]:
    """Return the headers and encoded body of one attachment part."""
    name = sanitise_filename(filename)
    ctype = guess_content_type(name)
    headers = [
        ("Content-Type", f" {ctype}{_param('name', name)}"),
        ("Content-Disposition", f" attachment{_param('filename', name)}"),
        ("Content-Transfer-Encoding", " base64"),
    ]
    return headers, base64_body(data)


HTML_CONTENT_TYPE = "text/html; charset=utf-8"


def boundary_from_seed(seed: bytes) -> str:
    """Return a multipart boundary; see the module doc for why it cannot collide."""
    return "=_kannon_" + base64.b32encode(seed).decode("ascii").rstrip("=").lower()


def mime_body(
    html: str, attachments: Sequence[tuple[str, bytes]], boundary_seed: bytes
) -> tuple[list[Header], bytes]:
    """Return the top-level MIME headers and the body bytes for ``html`` plus attachments."""
    qp = quoted_printable(html)
    if not attachments:
        return [
            ("Content-Type", " " + HTML_CONTENT_TYPE),
            ("Content-Transfer-Encoding", " quoted-printable"),
        ], qp
    boundary = boundary_from_seed(boundary_seed)
    delimiter = f"--{boundary}\r\n".encode("ascii")
    chunks: list[bytes] = [
        delimiter,
        serialise_headers(
            [
                ("Content-Type", " " + HTML_CONTENT_TYPE),
                ("Content-Disposition", " inline"),
                ("Content-Transfer-Encoding", " quoted-printable"),
            ]
        ),
        b"\r\n",
        qp,
    ]
    for filename, data in attachments:
        part_headers, encoded = attachment_part(filename, data)
        # qp and base64 bodies end in CRLF, which the next delimiter line then follows.
        chunks += [delimiter, serialise_headers(part_headers), b"\r\n", encoded]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    headers = [("Content-Type", f' multipart/mixed;{CRLF} boundary="{boundary}"')]
    return headers, b"".join(chunks)
