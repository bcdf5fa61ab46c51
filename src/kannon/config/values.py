"""Parsing of the value syntaxes an operator types into YAML, env vars and flags.

Owns the user-facing grammar of configuration values — Go-style durations, byte sizes, booleans,
comma-separated lists, listen addresses, DNS server addresses — and the wording of what is wrong
with a bad value. Every parser raises ``ValueError`` whose message starts with the offending value
(shown by :func:`show_value`), so the loader can prefix it with the key, env var and flag.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from datetime import timedelta

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

# Go's time.ParseDuration units, in microseconds (timedelta's resolution; "ns" rounds down).
_DURATION_UNITS_US: dict[str, float] = {
    "ns": 0.001,
    "us": 1,
    "µs": 1,  # U+00B5 MICRO SIGN, what Go prints
    "μs": 1,  # U+03BC GREEK SMALL LETTER MU, what people type
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_PLAIN_NUMBER = re.compile(rf"[+-]?{_NUMBER}")
_INTEGER = re.compile(r"[+-]?\d+")

# kb = 1024 bytes, as in the original's "1024kb" = 1 MiB default; SI and IEC spellings both mean
# powers of 1024 because nobody sizing a mail payload means 1000.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_SIZE = re.compile(rf"({_NUMBER})\s*([a-z]*)")

DURATION_HINT = "use e.g. 10s, 1m30s, 500ms, 8760h"
SIZE_HINT = "use e.g. 1024kb, 64mb, 32MiB, 1048576"
BOOL_HINT = "use true/false, yes/no or 1/0"


def show_value(value: object) -> str:
    """Render a raw configuration value on one line, strings double-quoted (JSON escaping)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value).replace("\n", "\\n")


_SECRET_QUERY = re.compile(r"((?:^|[?&])(?:password|pass|token|auth_token)=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` fit to print: a password in the user info, a bare NATS token (``nats://<token>@``)
    and ``password=`` / ``token=`` query parameters replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:***"
        elif parts.scheme.lower() in ("nats", "tls", "ws", "wss"):
            userinfo = "***"  # NATS reads a lone user name as the auth token
        netloc = f"{userinfo}@{hostport}"
    query = _SECRET_QUERY.sub(r"\1***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def parse_bool(value: object) -> bool:
    """true/false/1/0/yes/no, case-insensitive; YAML booleans and the integers 0/1 pass through."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"{show_value(value)} is not a boolean ({BOOL_HINT})")


def parse_int(value: object) -> int:
    """A whole number written in decimal; booleans and fractional numbers are refused."""
    # bool is an int subclass: `port: yes` in YAML must not silently become port 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise ValueError(f"{show_value(value)} is not an integer")


def parse_duration(value: object) -> timedelta:
    """Go-style duration ("10s", "1m30s", "1.5h", "500ms"); a bare number means seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if _PLAIN_NUMBER.fullmatch(text):
            return timedelta(seconds=float(text))
        sign = 1
        body = text
        if body[:1] in ("+", "-"):
            sign = -1 if body[0] == "-" else 1
            body = body[1:]
        total_us = 0.0
        pos = 0
        for match in _DURATION_PART.finditer(body):
            if match.start() != pos:
                break
            total_us += float(match.group(1)) * _DURATION_UNITS_US[match.group(2)]
            pos = match.end()
        if body and pos == len(body):
            return timedelta(microseconds=sign * total_us)
    raise ValueError(f"{show_value(value)} is not a duration ({DURATION_HINT})")


def format_duration(value: timedelta) -> str:
    """Inverse of :func:`parse_duration` for display: 90s → "1m30s", 2160h → "2160h"."""
    total_us = round(value / timedelta(microseconds=1))
    if total_us == 0:
        return "0s"
    sign = "-" if total_us < 0 else ""
    total_us = abs(total_us)
    seconds, micros = divmod(total_us, 1_000_000)
    if seconds == 0:
        if micros % 1000 == 0:
            return f"{sign}{micros // 1000}ms"
        return f"{sign}{micros}us"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or micros:
        frac = f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".")[1:] if micros else ""
        parts.append(f"{secs}{frac}s")
    return sign + "".join(parts)


def parse_size(value: object) -> int:
    """Byte size: "1024kb", "1mb", "32MiB", "1048576" (k/m/g are powers of 1024) → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match and match.group(2) in _SIZE_UNITS:
            number = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
            if number.is_integer():
                return int(number)
    raise ValueError(f"{show_value(value)} is not a size ({SIZE_HINT})")


def parse_list(value: object) -> tuple[str, ...]:
    """A YAML list of scalars or a comma-separated string; blanks around items are dropped."""
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"{show_value(value)} is not a list (use a YAML list or a,b,c)")
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ValueError(f"{show_value(value)} is not a list of plain values")
        text = str(item).strip()
        if text:
            out.append(text)
    return tuple(out)


def parse_listen_address(address: str) -> tuple[str, int]:
    """Split a Go-style listen address into (host, port).

    ":25" → ("", 25) where the empty host means all interfaces (asyncio's ``create_server``
    treats "" that way too); "127.0.0.1:2525" → ("127.0.0.1", 2525); "[::1]:25" → ("::1", 25).
    Port 0 is allowed: the OS picks a free port (what tests want).
    """
    text = address.strip()
    bad = ValueError(f"{show_value(address)} is not a listen address (use host:port or :port)")
    if ":" not in text:
        raise bad
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    elif ":" in host or any(ch.isspace() for ch in host):
        # An unbracketed IPv6 host is ambiguous ("::1:25"), as in Go's net.SplitHostPort.
        raise bad
    if not port_text.isdigit() or int(port_text) > 65535:
        raise bad
    return host, int(port_text)


def parse_dns_server(entry: str, default_port: int = 53) -> tuple[str, int]:
    """Split a DNS server "ip[:port]" ("1.1.1.1", "1.1.1.1:5353", "::1", "[::1]:53")."""
    text = entry.strip()
    bad = ValueError(
        f"{show_value(entry)} is not a DNS server (use an IP address, ip:port or [ipv6]:port)"
    )
    host, port = text, default_port
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        host = inner
        if rest:
            port_text = rest[1:]
            if not port_text.isdigit():
                raise bad
            port = int(port_text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise bad
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    if not 1 <= port <= 65535:
        raise bad
    return host, port
