"""The SMTP session cache: open sessions kept for reuse, one idle list per destination (MX host
or relay). (Not a "pool": in Kannon the Pool is the set of unfinished Deliveries, and an IP pool a
group of sender nodes.)

A bulk send to one provider then costs one TCP + TLS handshake per connection instead of per
message. Bounded three ways so a fleet of senders stays polite to remote servers and to its own
file descriptors: idle sessions expire after `idle_timeout` (servers drop idle clients anyway,
Postfix after 300 s, many after less), at most `max_idle` are kept overall, and a session
retires after `max_messages` transactions (several providers limit messages per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib

QUIT_TIMEOUT = 2.0


@dataclass(eq=False)
class Connection:
    """One SMTP session after EHLO (and STARTTLS / AUTH when they apply)."""

    client: aiosmtplib.SMTP
    key: str
    remote: str
    tls: bool
    messages: int = 0
    idle_since: float = field(default=0.0)
    max_messages: int = 0
    """Transactions before it retires (0: the cache's `max_messages`); a destination's own."""
    on_close: Callable[[], None] | None = None
    """Called once when the session is closed (gives back its connection lease)."""
    needs_reset: bool = False
    """The last transaction ended without the message accepted, so the server may still hold
    part of it: RSET before the next MAIL (after an accepted message a new MAIL is enough)."""

    @property
    def usable(self) -> bool:
        return self.client.is_connected


class SessionCache:
    """Idle SMTP sessions by destination key, bounded as the module docstring says."""

    def __init__(
        self,
        *,
        idle_timeout: float,
        max_idle: int,
        max_messages: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.max_messages = max_messages
        self._clock = clock
        self._idle: dict[str, list[Connection]] = {}

    @property
    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def take(self, key: str) -> Connection | None:
        """The most recently used idle session to `key`, or None. Expired ones are closed."""
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if not conns:
                del self._idle[key]
            if conn.usable and not self._expired(conn):
                return conn
            await close(conn)
            conns = self._idle.get(key)
        return None

    async def put(self, conn: Connection) -> None:
        """Keep a session for the next message to the same destination, or close it."""
        limit = conn.max_messages or self.max_messages
        if not conn.usable or conn.messages >= limit or self.max_idle <= 0:
            await close(conn)
            return
        if self.idle_count >= self.max_idle:
            await self._close_oldest()
        conn.idle_since = self._clock()
        self._idle.setdefault(conn.key, []).append(conn)

    async def reap(self) -> int:
        """Close every expired idle session; returns how many were closed."""
        expired: list[Connection] = []
        for key in list(self._idle):
            keep = [c for c in self._idle[key] if c.usable and not self._expired(c)]
            expired.extend(c for c in self._idle[key] if c not in keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        for conn in expired:
            await close(conn)
        return len(expired)

    async def close_all(self) -> None:
        idle = [c for conns in self._idle.values() for c in conns]
        self._idle.clear()
        await asyncio.gather(*(close(c) for c in idle), return_exceptions=True)

    def _expired(self, conn: Connection) -> bool:
        return self._clock() - conn.idle_since > self.idle_timeout

    async def _close_oldest(self) -> None:
        oldest: Connection | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return
        conns = self._idle[oldest.key]
        conns.remove(oldest)
        if not conns:
            del self._idle[oldest.key]
        await close(oldest)


async def close(conn: Connection) -> None:
    """QUIT politely when the session is still open, then drop it whatever the answer."""
    client = conn.client
    if client.is_connected:
        # A server that does not answer QUIT quickly has nothing left to tell us.
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit(timeout=QUIT_TIMEOUT)
    discard(conn)


def discard(conn: Connection) -> None:
    """Drop the session at once (no QUIT) and let go of what it held."""
    conn.client.close()
    on_close, conn.on_close = conn.on_close, None
    if on_close is not None:
        on_close()
