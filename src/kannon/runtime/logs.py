"""Structured logging for every process: one `key=value` line per event on stderr, with repeated
warnings and errors folded (`log_flood`)."""

from __future__ import annotations

import logging
import sys
import time

from kannon.runtime import log_flood

# What a client sends ends up in log lines (an SMTP command, an address, a header). Control
# characters are shown escaped so that no client can split a line (CR, LF), rewrite or recolour
# a terminal (ESC, BS) or reorder text (bidi overrides and line separators).
_CONTROL: dict[int, str] = {
    code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_CONTROL.update({code: f"\\u{code:04x}" for code in (0x2028, 0x2029, *range(0x202A, 0x202F))})
_CONTROL.update({code: f"\\u{code:04x}" for code in range(0x2066, 0x206A)})
# Inside msg="...": backslash and double quote too, so the field stays one unambiguous value.
_QUOTED: dict[int, str] = {**_CONTROL, ord("\\"): "\\\\", ord('"'): '\\"'}


def escape(text: str, *, quoted: bool = False) -> str:
    """``text`` with control characters escaped (and ``"`` and ``\\`` when ``quoted``)."""
    # Every character escaped is one `isprintable()` refuses (or a quote or backslash), so
    # nearly every text is returned as it is, without a table lookup per character.
    if text.isprintable() and not (quoted and ('"' in text or "\\" in text)):
        return text
    return text.translate(_QUOTED if quoted else _CONTROL)


class _KeyValueFormatter(logging.Formatter):
    """The one place log lines are formatted: every Component's, and the libraries' too."""

    def __init__(self) -> None:
        super().__init__()
        # The last second formatted and its text: busy processes log many lines a second.
        self._second = -1
        self._ts = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        ts = self._ts
        msg = escape(record.getMessage(), quoted=True)
        line = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f'logger={record.name} msg="{msg}"'
        )
        extra = getattr(record, "kv", None)
        if isinstance(extra, dict):
            # repr() escapes a string's control characters already; other values are escaped.
            line += "".join(
                f" {k}={v!r}" if isinstance(v, str) else f" {k}={escape(str(v))}"
                for k, v in extra.items()
            )
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(debug: bool) -> None:
    # No line says which thread, process or source line logged it, so a record need not look
    # them up (a stack walk, among others, for every record): the "Optimization" section of the
    # Logging HOWTO. The SMTPSender logs a line per Envelope (ADR 0057).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    log_flood.install(handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("asyncio", "nats", "mail.log", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def obfuscate(address: str) -> str:
    """Log form of a recipient: first character of the local part, the rest masked."""
    local, at, domain = address.partition("@")
    if not at or not local:
        return "***"
    return local[0] + "*" * (len(local) - 1) + "@" + domain
