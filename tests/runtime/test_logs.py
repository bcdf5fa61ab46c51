"""Log lines: what a client sends cannot split, recolour or rewrite them."""

from __future__ import annotations

import logging
import sys

import pytest

from kannon.runtime.logs import _KeyValueFormatter, escape, obfuscate

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
