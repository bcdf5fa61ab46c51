"""Header encoding/folding, filenames, content types and body encodings of ``mime``."""

from __future__ import annotations

import email
import email.policy
import quopri
import unicodedata
from email.header import decode_header, make_header
from email.utils import getaddresses

import pytest

from kannon.envelope import mime
from tests.support import parse_message


def parse_header(header: mime.Header) -> email.message.EmailMessage:
    return parse_message(mime.serialise_headers([header]) + b"\r\n")


def lines_of(header: mime.Header) -> list[str]:
    return mime.serialise_headers([header]).decode().split("\r\n")[:-1]


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nBcc: x@y.z", "a\x00b"])
def test_header_injection_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        mime.check_header_value("Subject", bad)
    with pytest.raises(ValueError):
        mime.unstructured("Subject", bad)
    with pytest.raises(ValueError):
        mime.mailbox("From", bad, "a@b.c")
    with pytest.raises(ValueError):
        mime.address_list("To", ["x@y.z", bad])


@pytest.mark.parametrize(
    "subject",
    [
        "Plain ASCII subject",
        "Double  spaces   kept",
        "Ünïcödé — émojis 🎉 and 中文字符",
        "Looks =?utf-8?q?encoded?= but is not",
        "x" * 150,  # one long word: still readable after the round trip
        " ".join(["word"] * 60),  # long ASCII: folded at spaces
        "中" * 120,  # long non-ASCII: many encoded words
        "tab\there",
    ],
)
def test_subject_round_trip_and_line_lengths(subject: str) -> None:
    header = mime.unstructured("Subject", subject)
    assert parse_header(header)["Subject"] == subject
    for line in lines_of(header):
        assert len(line.encode()) <= 78 or " " not in subject
        assert len(line.encode()) <= 998
        assert line.isascii()


def test_ascii_subject_is_written_raw() -> None:
    assert mime.unstructured("Subject", "Your order #12") == ("Subject", " Your order #12")


def test_encoded_words_are_at_most_75_chars() -> None:
    value = mime.unstructured("Subject", "é" * 200)[1]
    words = value.split()
    assert len(words) > 1
    assert all(len(w) <= 75 and w.startswith("=?utf-8?b?") for w in words)
    assert str(make_header(decode_header(value))) == "é" * 200


@pytest.mark.parametrize(
    ("alias", "address", "expected_raw"),
    [
        ("", "a@k.example.com", " a@k.example.com"),
        ("Kannon News", "a@k.example.com", " Kannon News <a@k.example.com>"),
        ("Doe, John", "a@k.example.com", ' "Doe, John" <a@k.example.com>'),
        ('Say "hi" \\o/', "a@k.example.com", ' "Say \\"hi\\" \\\\o/" <a@k.example.com>'),
        ("J. R. R.", "a@k.example.com", ' "J. R. R." <a@k.example.com>'),
    ],
)
def test_from_quoting(alias: str, address: str, expected_raw: str) -> None:
    header = mime.mailbox("From", alias, address)
    assert header == ("From", expected_raw)
    parsed = parse_header(header)["From"]
    assert parsed.addresses[0].display_name == alias
    assert parsed.addresses[0].addr_spec == address


@pytest.mark.parametrize(
    "alias", ["Zoë Ünïcode", "東京ストア", "東京ストア" * 20, "=?utf-8?b?eA==?=", 'ünï, "q" <x>']
)
def test_from_encoded_alias_round_trip(alias: str) -> None:
    header = mime.mailbox("From", alias, "a@k.example.com")
    assert header[1].isascii()
    assert all(len(line) <= 78 for line in lines_of(header))
    # RFC 2047 §6.2 decoding (whitespace between encoded words is dropped). Python's structured
    # address parser inserts a space between adjacent encoded words, so decode the phrase here.
    phrase, _, angle = header[1].rpartition(" <")
    assert angle == "a@k.example.com>"
    assert str(make_header(decode_header(phrase))) == alias
    parsed = parse_header(header)["From"]
    assert parsed.addresses[0].addr_spec == "a@k.example.com"


def test_long_ascii_alias_stays_a_quoted_string() -> None:
    alias = "Customer Care Team of " + "x" * 250
    header = mime.mailbox("From", alias, "a@k.example.com")
    assert "=?" not in header[1]
    assert parse_header(header)["From"].addresses[0].display_name == alias


def test_address_list_folds_and_round_trips() -> None:
    addresses = [f"user{i}.with.a.long.name@example{i}.org" for i in range(40)]
    header = mime.address_list("To", addresses)
    lines = lines_of(header)
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    msg = parse_header(header)
    assert [a for _, a in getaddresses([str(msg["To"])])] == addresses


def test_address_list_needs_one() -> None:
    with pytest.raises(ValueError):
        mime.address_list("To", [])


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\Desktop\\cv.docx", "cv.docx"),
        ("quo\"te's.txt", "quotes.txt"),
        ("tab\tnew\nline\x00.txt", "tabnewline.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # right-to-left override removed
        (".hidden", "hidden"),
        ("", "attachment"),
        ("../", "attachment"),
        ("   ", "attachment"),
        ("ré port.pdf", "ré port.pdf"),
        ("e\u0301.txt", "é.txt"),  # NFC
        # RFC 2047 encoded words are decoded before the check, as clients decode them.
        ("=?utf-8?b?aW52b2ljZeKArmZkcC5leGU=?=", "invoicefdp.exe"),
        ("=?UTF-8?Q?invoice=E2=80=AEfdp.exe?=", "invoicefdp.exe"),
        ("=?utf-8?q?r=C3=A9sum=C3=A9?= 2024.pdf", "résumé 2024.pdf"),
        # Encoded twice: decoded twice.
        ("=?utf-8?b?PT91dGYtOD9iP2FXNTJiMmxqWmVLQXJtWmtjQzVsZUdVPT89?=", "invoicefdp.exe"),
        # Undecodable: no encoded word is left for a client to decode.
        ("=?x-no-such-charset?b?aGk=?=.txt", "x-no-such-charset?b?aGk=.txt"),
    ],
)
def test_sanitise_filename(filename: str, expected: str) -> None:
    assert mime.sanitise_filename(filename) == expected


def test_sanitise_long_filename_keeps_extension() -> None:
    name = mime.sanitise_filename("a" * 500 + ".pdf")
    assert len(name) == 200 and name.endswith(".pdf")


@pytest.mark.parametrize(
    ("filename", "ctype"),
    [
        ("a.pdf", "application/pdf"),
        ("A.PDF", "application/pdf"),
        ("photo.jpg", "image/jpeg"),
        ("data.csv", "text/csv"),
        ("notes.txt", "text/plain"),
        ("archive.tar.gz", "application/gzip"),
        ("cv.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("sheet.XLSX", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ("invite.ics", "text/calendar"),
        ("blob", "application/octet-stream"),
        ("weird.zzzz", "application/octet-stream"),
    ],
)
def test_guess_content_type(filename: str, ctype: str) -> None:
    assert mime.guess_content_type(filename) == ctype


@pytest.mark.parametrize(
    "html",
    [
        "<p>héllo = wörld</p>\n",
        "line with trailing spaces   \nand\ttabs\t\n",
        "From the start of a line\nFrom here too\n",
        "x" * 5000,
        "mixed\r\nline\rendings\n",
        "no final newline",
        "",
    ],
)
def test_quoted_printable(html: str) -> None:
    encoded = mime.quoted_printable(html)
    text = encoded.decode("ascii")
    assert "\n" not in text.replace("\r\n", "")
    assert "\r" not in text.replace("\r\n", "")
    assert all(len(line) <= 76 for line in text.split("\r\n"))
    assert not any(line.startswith("From ") for line in text.split("\r\n"))
    normalised = html.replace("\r\n", "\n").replace("\r", "\n")
    decoded = quopri.decodestring(encoded.replace(b"\r\n", b"\n")).decode()
    assert decoded.rstrip("\n") == normalised.rstrip("\n")


def test_boundary_cannot_collide_with_content() -> None:
    boundary = mime.boundary_from_seed(b"seed")
    hostile = f"--{boundary}\n--{boundary}--\n"
    _, body = mime.mime_body(hostile, [("a.bin", hostile.encode())], b"seed")
    delimiter_lines = [
        line for line in body.split(b"\r\n") if line.startswith(f"--{boundary}".encode())
    ]
    assert delimiter_lines == [f"--{boundary}".encode()] * 2 + [f"--{boundary}--".encode()]


@pytest.mark.parametrize(
    "filename",
    ["=?utf-8?b?aW52b2ljZeKArmZkcC5leGU=?=", "=?utf-8?q?invoice=E2=80=AE?=fdp.exe"],
)
def test_a_client_never_sees_a_hidden_override_in_an_encoded_word_filename(filename: str) -> None:
    headers, body = mime.attachment_part(filename, b"MZ")
    part = email.message_from_bytes(
        mime.serialise_headers(headers) + b"\r\n" + body, policy=email.policy.default
    )
    shown = part.get_filename()
    assert shown is not None and shown.endswith("fdp.exe")
    assert not [ch for ch in shown if unicodedata.category(ch) in ("Cf", "Cc")]


def test_long_non_ascii_filename_uses_rfc2231_continuations() -> None:
    filename = "報告書" * 60 + ".pdf"
    headers, body = mime.attachment_part(filename, b"%PDF")
    raw = mime.serialise_headers(headers) + b"\r\n" + body
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert b"filename*1*=" in raw
    part = email.message_from_bytes(raw, policy=email.policy.default)
    assert part.get_filename() == mime.sanitise_filename(filename)
    assert part.get_content() == b"%PDF"
