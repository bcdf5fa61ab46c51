"""Structured logging for every process: one `key=value` line per event on stderr, with repeated
warnings and errors folded (`log_flood`)."""

from __future__ import annotations

import logging
import sys
import time

from kannon.runtime import log_flood


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", "\\n")
        line = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f'logger={record.name} msg="{msg}"'
        )
        extra = getattr(record, "kv", None)
        if isinstance(extra, dict):
            line += "".join(
                f" {k}={v!r}" if isinstance(v, str) else f" {k}={v}" for k, v in extra.items()
            )
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(debug: bool) -> None:
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
