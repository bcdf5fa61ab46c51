"""Log lines: what a client sends cannot split, recolour or rewrite them."""

from __future__ import annotations

import logging
import sys

import pytest

from kannon.runtime.logs import _CONTROL, _QUOTED, _KeyValueFormatter, escape, obfuscate

HOSTILE = "EHLO \x1b[31mred\x1b[0m\rforged line\nlevel=error \x08\x00\x7f\x9b\u202eevil\u2028x"


def _format(msg: str, *args: object, **kv: object) -> str:
    record = logging.LogRecord("kannon.test", logging.WARNING, __file__, 1, msg, args, None)
    if kv:
        record.kv = kv
    return _KeyValueFormatter().format(record)


def _printable(line: str) -> bool:
    return all(ch.isprintable() for ch in line)


def test_control_characters_in_the_message_are_escaped() -> None:
    line = _format("unrecognised: %s", HOSTILE)
    assert _printable(line)
    assert "\\x1b[31mred\\x1b[0m\\rforged line\\nlevel=error \\x08\\x00\\x7f\\x9b" in line
    assert "\\u202eevil\\u2028x" in line


def test_quotes_and_backslashes_cannot_end_the_msg_field() -> None:
    line = _format('say "hi" \\ bye')
    assert line.endswith('msg="say \\"hi\\" \\\\ bye"')


@pytest.mark.parametrize(
    "value",
    [HOSTILE, [HOSTILE], HOSTILE.encode(), ValueError(HOSTILE), {"k": HOSTILE}],
    ids=["str", "list", "bytes", "exception", "dict"],
)
def test_control_characters_in_values_are_escaped(value: object) -> None:
    line = _format("report", peer="x", value=value)
    assert _printable(line), line
    assert "\\x1b" in line


def test_tracebacks_stay_on_one_line() -> None:
    try:
        raise RuntimeError(HOSTILE)
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("kannon.test", logging.ERROR, __file__, 1, "boom", (), exc_info)
    line = _KeyValueFormatter().format(record)
    assert _printable(line)
    assert "RuntimeError" in line


def test_plain_text_is_unchanged() -> None:
    assert (
        escape("report accepted: 250 2.0.0 ok (é, 日本)")
        == "report accepted: 250 2.0.0 ok (é, 日本)"
    )


def test_obfuscate_masks_the_local_part() -> None:
    assert obfuscate("stranger@far.example") == "s*******@far.example"
    assert obfuscate("not an address") == "***"


def test_text_without_anything_to_escape_is_recognised_before_the_table_is_read() -> None:
    # The shortcut in `escape` holds only while `isprintable()` refuses every escaped character.
    assert not any(chr(code).isprintable() for code in _CONTROL)
    for text in ["plain", 'say "hi"', "back\\slash", HOSTILE, "tab\there", "é 日本", ""]:
        for quoted in (False, True):
            table = _QUOTED if quoted else _CONTROL
            assert escape(text, quoted=quoted) == text.translate(table), (text, quoted)


def test_each_line_carries_its_own_time_though_a_second_is_formatted_once() -> None:
    formatter = _KeyValueFormatter()
    stamps = []
    for created in (1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5):
        record = logging.LogRecord("kannon.test", logging.INFO, __file__, 1, "x", (), None)
        record.created, record.msecs = created, (created % 1) * 1000
        stamps.append(formatter.format(record).split(" ", 1)[0])
    assert stamps == [
        "ts=2023-11-14T22:13:20.250Z",
        "ts=2023-11-14T22:13:20.750Z",
        "ts=2023-11-14T22:13:21.500Z",
    ]
