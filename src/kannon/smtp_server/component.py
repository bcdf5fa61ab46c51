"""The SMTPServer Component: aiosmtpd on ``smtp.address``, accepting reports for bounce addresses
and, when configured, at ``smtp.feedback_address``.

Per session:

* RCPT: only a bounce address whose HMAC tag verifies, or the feedback address (where mailbox
  providers' feedback loops send ARF complaint reports), is accepted; anything else gets 550
  5.7.1 right away (we relay nothing, and refusing at RCPT time means we never accept mail we
  would have to bounce ourselves). More than ``smtp.max_recipients`` gets 452, so the client
  retries the rest in a new transaction.
* DATA: over ``smtp.max_payload`` is 552 (aiosmtpd, after reading the rest). The report is parsed
  by ``kannon.dsn``; each failed recipient that belongs to an accepted bounce address becomes a
  Bounced event published with a PubAck before we answer 250. If publishing fails the answer is
  451, so the remote MTA keeps the report and retries: nothing is lost, and the deterministic event
  id keeps the retry from counting twice. An ARF feedback report of type abuse that maps to one
  of our Deliveries through a verified bounce address becomes a Complained event, published the
  same way (``smtp_server.complaints``, ADR 0028). Anything else (delays, success notices,
  auto-replies, unreadable reports, reports about someone else, complaints that map to nothing)
  is answered 250, logged and counted: the sender cannot fix it, and a 5xx would only bounce a
  bounce.
* Reading a report (MIME, parsing, matching recipients) is CPU work on attacker-controlled
  bytes: it runs in a worker thread of the Component's own, in time linear in the message and
  bounded by the parser's caps (ADR 0018). Python's ``re`` holds the GIL for a whole search, so
  running in a thread alone would not protect the loop; the linear bound is what does.
* Timeouts: ``smtp.read_timeout`` is the longest the client may stay silent (aiosmtpd only
  restarts its timer on each command, which would cut a slow message body), except while we are
  working on its message; ``smtp.write_timeout`` bounds how long a reply may wait for a client
  that does not read; ``smtp.max_session_time`` bounds a whole session (a client dripping one
  byte every few seconds never trips the read timeout): it is answered 421 and closed, after
  the reply to a report being processed.
* ``smtp.max_sessions`` sessions at most: one more is answered 421 and closed at once.
* A client that hangs up (after QUIT, or mid-session) is an ordinary end of a session, logged at
  info; any other error in a session is logged with its traceback and answered 451.

Shutdown: stop listening, let reports being processed finish (up to the grace period), then
answer 421 to the open sessions and close them; a client cut mid-message retries later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import AnyStr, cast

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax
from prometheus_client import Counter

from kannon.config import ConfigError, Settings, require
from kannon.config.values import parse_listen_address
from kannon.envelope.bounce import parse_bounce_address
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life
from kannon.runtime.logs import obfuscate
from kannon.smtp_server.inbound import read_report
from kannon.wire.stats import Publisher, publish_outcome

log = logging.getLogger("kannon.smtp_server")

RCPTS = Counter("kannon_smtp_rcpt_total", "RCPT commands by result", ["result"])
REPORTS = Counter("kannon_smtp_reports_total", "Messages received, by parsed kind", ["kind"])
BOUNCES = Counter("kannon_smtp_bounces_published_total", "Bounced events published from reports")
COMPLAINTS = Counter(
    "kannon_smtp_complaints_total",
    "ARF feedback reports received, by what came of them",
    ["result"],  # published, not_abuse (another feedback type), unmapped (no Delivery of ours)
)
IGNORED = Counter(
    "kannon_smtp_report_items_ignored_total", "Report items that produced no Bounced event"
)
PUBLISH_FAILURES = Counter(
    "kannon_smtp_publish_failures_total", "Reports answered 451 because publishing failed"
)
SESSIONS_REFUSED = Counter(
    "kannon_smtp_sessions_refused_total", "Connections answered 421: smtp.max_sessions were open"
)
SESSIONS_EXPIRED = Counter(
    "kannon_smtp_sessions_expired_total", "Sessions closed with 421 after smtp.max_session_time"
)

REFUSED_RCPT = "550 5.7.1 Recipient refused: this server accepts only its own bounce addresses"
TOO_MANY_RCPT = "452 4.5.3 Too many recipients"
ACCEPTED = "250 2.0.0 Report accepted"
RETRY_LATER = "451 4.3.0 Report not recorded, please try again later"
SESSION_ERROR = "451 4.3.0 Error processing the command, please try again later"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down\r\n"
TOO_MANY_SESSIONS = b"421 4.7.0 Too many open sessions, please try again later\r\n"
SESSION_TOO_LONG = b"421 4.4.2 Session time limit reached, closing\r\n"
# How the peer hanging up surfaces in aiosmtpd's command loop (EOF while reading a command, or
# an error writing to a closed socket).
_HANG_UPS = (asyncio.IncompleteReadError, ConnectionError)
DEFAULT_GRACE = timedelta(seconds=10)
# Threads reading reports: parsing holds the GIL, so more would not add throughput; a pool of
# its own keeps a flood of reports from queueing every other to_thread call in the process.
READER_THREADS = 2
# The end of a message: a line holding a single dot (RFC 5321 4.1.1.4).
END_OF_DATA = b"\r\n.\r\n"
# More than a StreamReader ever holds (it stops reading past 2 lines' worth, plus one receive
# of at most 256 KiB), so one read takes all it has.
READ_ALL = 4 * 1024 * 1024


def _mask_path(path: str) -> str:
    """A MAIL FROM for the logs: "<>" as is, an address masked like every recipient."""
    address = path.strip().strip("<>")
    return obfuscate(address) if "@" in address else path


def _stream(transport: asyncio.BaseTransport | None) -> asyncio.Transport | None:
    """The connection's transport, a stream transport. Not checked with isinstance: uvloop's
    transports do not subclass asyncio's (ADR 0054)."""
    return cast(asyncio.Transport, transport) if transport is not None else None


class _Refusal(asyncio.Protocol):
    """What a connection over ``smtp.max_sessions`` gets: 421 and a close, no SMTP session."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        SESSIONS_REFUSED.inc()
        log.info(
            "too many sessions; connection refused",
            extra={"kv": {"peer": str(transport.get_extra_info("peername"))}},
        )
        stream = _stream(transport)
        if stream is not None:
            stream.write(TOO_MANY_SESSIONS)
            stream.close()


class _Session(SMTP):
    """aiosmtpd's SMTP protocol with idle read timeouts, write timeouts, session limits and a
    DATA command that reads the message in blocks."""

    def __init__(
        self,
        handler: ReportHandler,
        *,
        read_timeout: float,
        write_timeout: float,
        max_session_time: float,
        sessions: set[_Session],
        **kwargs: object,
    ) -> None:
        # aiosmtpd's SMTP.__init__ types each keyword; **kwargs (hostname, limits) cannot say which.
        super().__init__(handler, timeout=read_timeout, **kwargs)  # type: ignore[arg-type]
        self._write_timeout = write_timeout
        self._max_session_time = max_session_time
        self._session_timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._sessions = sessions
        self._paused = False
        # Counted from creation (the factory decides on the limit before connection_made runs,
        # and several connections can be accepted in one loop iteration).
        sessions.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._session_timer = self.loop.call_later(self._max_session_time, self._session_expired)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        if self._session_timer is not None:
            self._session_timer.cancel()
        super().connection_lost(error)

    def _session_expired(self) -> None:
        if self._paused:
            # A report is being processed: its reply goes out first (see smtp_DATA).
            self._expired = True
            return
        self._close_expired()

    def _close_expired(self) -> None:
        stream = _stream(self.transport)
        if stream is None or stream.is_closing():
            return
        SESSIONS_EXPIRED.inc()
        log.info(
            "session time limit reached; closing",
            extra={"kv": {"peer": str(self.session.peer if self.session else None)}},
        )
        stream.write(SESSION_TOO_LONG)
        stream.close()

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's hook for an exception in the command loop; the answer is sent back."""
        peer = str(self.session.peer if self.session else None)
        if isinstance(error, _HANG_UPS):
            # The client hung up (right after QUIT, or mid-session): an ordinary end.
            log.info("client hung up", extra={"kv": {"peer": peer}})
            self._abort()  # stops the command loop, which would read EOF again and again
            return SESSION_ERROR  # written to a closed connection: nobody reads it
        log.error("smtp session error", exc_info=error, extra={"kv": {"peer": peer}})
        return SESSION_ERROR

    def data_received(self, data: bytes) -> None:
        if not self._paused:
            self._reset_timeout()
        super().data_received(data)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA, as aiosmtpd's, but the message is read in blocks instead of line by line.

        aiosmtpd's loop costs ~2.5 us of Python per line and does not yield while its buffer
        holds whole lines: a megabyte of empty lines kept the event loop (every Component of
        the process) busy for over a second. Here the end of data is found with C searches
        over what has arrived, so a megabyte costs a few milliseconds whatever its lines are.
        The replies are aiosmtpd's: 552 over ``data_size_limit``, 500 for a line over
        ``line_length_limit``, both only after the whole message was read.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        message, too_big = await self._read_message()
        if too_big:
            self.envelope = self._create_envelope()  # as aiosmtpd's post-DATA state
            await self.push("552 Error: Too much mail data")
            return
        if max(map(len, message.split(b"\r\n"))) > self.line_length_limit - 2:
            self.envelope = self._create_envelope()  # as aiosmtpd's post-DATA state
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            return
        # Undo dot-stuffing: a line starting with "." was sent with one more.
        content = (b"\r\n" + message).replace(b"\r\n.", b"\r\n")[2:]
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()  # as aiosmtpd's post-DATA state
        await self.push("250 OK" if status is MISSING else status)
        if self._expired:
            self._close_expired()  # the time limit passed while the report was processed

    async def _read_message(self) -> tuple[bytes, bool]:
        """The message up to (not including) the final ".\r\n"; and whether it was too big.

        Takes everything the reader holds at each step (flow control keeps that under a few
        hundred KB) and searches it; bytes after the end of data are handed back to the reader
        for the next command (pipelining). A message over the size limit is read to its end
        but not kept.
        """
        limit = self.data_size_limit or 0  # 0: no limit
        # The CRLF that ended the DATA command starts the first line, so a message that ends
        # at once (".\r\n") is found like any other end of data.
        data = bytearray(b"\r\n")
        size = 0  # bytes of the message received, kept or not
        searched = 0
        while (end := data.find(END_OF_DATA, searched)) < 0:
            if 0 < limit < size:
                del data[: -len(END_OF_DATA)]  # over the limit: read on, keep nothing
            searched = max(0, len(data) - len(END_OF_DATA) + 1)
            block = await self._reader.read(READ_ALL)
            if not block:
                raise asyncio.IncompleteReadError(bytes(data), None)  # hung up mid-message
            size += len(block)
            data += block
        rest = bytes(data[end + len(END_OF_DATA) :])
        if rest and not self._reader.at_eof():
            # The reader is empty now (READ_ALL took it all, nothing ran since): these
            # bytes go back in their place, ahead of anything received later.
            self._reader.feed_data(rest)
        size -= len(rest) + len(END_OF_DATA) - 2
        if 0 < limit < size:
            return b"", True
        return bytes(data[2 : end + 2]), False

    def pause_timeout(self) -> None:
        """The client is waiting for us: its silence is not a timeout."""
        self._paused = True
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def resume_timeout(self) -> None:
        self._paused = False
        if self.transport is not None:
            self._reset_timeout()

    async def push(self, status: AnyStr) -> None:
        if self._client_gone():
            # Nobody to tell: asyncio's transport drops such a write, uvloop's raises
            # RuntimeError (ADR 0054). Yield, as asyncio's drain would: aiosmtpd's session loop
            # answers a read at end of file with a reply, and would spin without ever letting
            # connection_lost (which ends the session) run.
            self._abort()
            await asyncio.sleep(0)
            return
        try:
            await asyncio.wait_for(super().push(status), self._write_timeout)
        except TimeoutError:
            log.info("client stopped reading replies; closing the session")
            self._abort()
        except (ConnectionResetError, BrokenPipeError):
            # The client went away mid-reply. aiosmtpd would let this end the session task with
            # an exception nobody retrieves (a traceback in the log per impatient client).
            self._abort()
        except RuntimeError:
            # uvloop: the transport closed between the check above and the write.
            if not self._client_gone():
                raise
            self._abort()

    def _client_gone(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def _abort(self) -> None:
        stream = _stream(self.transport)
        if stream is not None:
            stream.abort()  # connection_lost then cancels the session task

    def shut_down(self) -> None:
        stream = _stream(self.transport)
        if stream is not None:
            stream.write(SHUTTING_DOWN)
            stream.close()


class ReportHandler:
    """aiosmtpd hooks: RCPT policy and DATA processing."""

    def __init__(
        self,
        secret: bytes,
        max_recipients: int,
        publisher: Publisher,
        clock: Callable[[], datetime],
        feedback_address: str | None = None,
    ) -> None:
        self.secret = secret
        self.max_recipients = max_recipients
        self.feedback_address = feedback_address.lower() if feedback_address else None
        self.publisher = publisher
        self.clock = clock
        self.readers: ThreadPoolExecutor | None = None  # set while the server runs
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_RCPT(
        self,
        server: _Session,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            RCPTS.labels("too_many").inc()
            return TOO_MANY_RCPT
        if self._is_feedback_address(address):
            RCPTS.labels("feedback").inc()
        elif parse_bounce_address(address, self.secret) is None:
            RCPTS.labels("refused").inc()
            log.info(
                "refused recipient",
                extra={"kv": {"peer": str(session.peer), "rcpt": obfuscate(address)}},
            )
            return REFUSED_RCPT
        else:
            RCPTS.labels("accepted").inc()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    def _is_feedback_address(self, address: str) -> bool:
        if self.feedback_address is None:
            return False
        return address.strip().strip("<>").strip().lower() == self.feedback_address

    async def handle_DATA(self, server: _Session, session: Session, envelope: Envelope) -> str:
        server.pause_timeout()
        self.busy += 1
        self.idle.clear()
        try:
            return await self._process(session, envelope)
        finally:
            self.busy -= 1
            if self.busy == 0:
                self.idle.set()
            server.resume_timeout()

    async def _process(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        context: dict[str, object] = {
            "peer": str(session.peer),
            "mail_from": _mask_path(envelope.mail_from or ""),
            "size": len(raw),
        }
        try:
            reading = await asyncio.get_running_loop().run_in_executor(
                self.readers,
                read_report,
                raw,
                list(envelope.rcpt_tos),
                self.secret,
                self.clock(),
            )
        except Exception:
            log.exception(
                "report could not be processed; accepted and dropped", extra={"kv": context}
            )
            REPORTS.labels("error").inc()
            return ACCEPTED
        report, verdict = reading.report, reading.verdict
        REPORTS.labels(report.kind).inc()
        if reading.complaint:
            COMPLAINTS.labels(reading.complaint).inc()
        context.update(kind=report.kind, message_id=reading.message_id)
        if verdict.ignored:
            IGNORED.inc(len(verdict.ignored))
            log.info(
                "report item ignored",
                extra={"kv": {**context, "reasons": verdict.ignored, "notes": report.notes}},
            )
        try:
            for outcome in verdict.outcomes:
                await publish_outcome(self.publisher, outcome)
        except Exception as exc:
            PUBLISH_FAILURES.inc()
            log.warning(
                "publishing a bounce failed; asking the sender to retry",
                extra={"kv": {**context, "error": repr(exc)}},
            )
            return RETRY_LATER
        for outcome in verdict.outcomes:
            if outcome.type == "bounced":
                BOUNCES.inc()
            log.info(
                "complaint recorded" if outcome.type == "complained" else "bounce recorded",
                extra={
                    "kv": {
                        **context,
                        "batch_id": outcome.batch_id,
                        "recipient": obfuscate(outcome.recipient),
                        "status": getattr(outcome.detail, "status", ""),
                    }
                },
            )
        return ACCEPTED


class SmtpServer:
    """Inbound SMTP for delivery reports; ``port`` is the bound port once ``run`` is ready."""

    name = "smtp"

    def __init__(
        self,
        settings: Settings,
        bus: Publisher,
        *,
        clock: Callable[[], datetime] = utc_now,
        grace: timedelta = DEFAULT_GRACE,
    ) -> None:
        secret = str(require(settings, "secret_key", needed_by="smtp")).encode("utf-8")
        try:
            parse_bounce_address("check@example.com", secret)
        except ValueError as exc:
            raise ConfigError(f"secret_key: {exc}", key="secret_key") from None
        smtp = settings.smtp
        self.host, self.port = parse_listen_address(smtp.address)
        self.domain = smtp.domain
        self.max_payload = smtp.max_payload
        self.read_timeout = smtp.read_timeout.total_seconds()
        self.write_timeout = smtp.write_timeout.total_seconds()
        self.max_sessions = smtp.max_sessions
        self.max_session_time = smtp.max_session_time.total_seconds()
        self.grace = grace.total_seconds()
        self.handler = ReportHandler(
            secret, smtp.max_recipients, bus, clock, feedback_address=smtp.feedback_address
        )
        self.sessions: set[_Session] = set()

    def _new_session(self) -> asyncio.Protocol:
        if len(self.sessions) >= self.max_sessions:
            return _Refusal()
        return _Session(
            self.handler,
            read_timeout=self.read_timeout,
            write_timeout=self.write_timeout,
            max_session_time=self.max_session_time,
            sessions=self.sessions,
            data_size_limit=self.max_payload,
            hostname=self.domain,
            ident="Kannon",
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )

    async def run(self, life: Life) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._new_session, self.host or None, self.port)
        readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="smtp-reader")
        self.handler.readers = readers
        self.port = server.sockets[0].getsockname()[1]
        log.info(
            "smtp server listening",
            extra={"kv": {"address": f"{self.host}:{self.port}", "domain": self.domain}},
        )
        life.ready()
        try:
            await life.stopping.wait()
        finally:
            server.close()
            try:
                await asyncio.wait_for(self.handler.idle.wait(), self.grace)
            except TimeoutError:
                log.warning("reports still in progress at shutdown were cut off")
            for session in list(self.sessions):
                session.shut_down()
            await server.wait_closed()
            # A report cut off above may still be read in a thread (a fraction of a second).
            await asyncio.to_thread(readers.shutdown, wait=True, cancel_futures=True)
            log.info("smtp server stopped")
