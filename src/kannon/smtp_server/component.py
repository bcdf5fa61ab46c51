"""The SMTPServer Component: aiosmtpd on ``smtp.address``, accepting reports for bounce addresses.

Per session:

* RCPT: only a bounce address whose HMAC tag verifies is accepted; anything else gets 550 5.7.1
  right away (we relay nothing, and refusing at RCPT time means we never accept mail we would
  have to bounce ourselves). More than ``smtp.max_recipients`` gets 452, so the client retries
  the rest in a new transaction.
* DATA: over ``smtp.max_payload`` is 552 (aiosmtpd, after reading the rest). The report is parsed
  by ``kannon.dsn``; each failed recipient that belongs to an accepted bounce address becomes a
  Bounced event published with a PubAck before we answer 250. If publishing fails the answer is
  451, so the remote MTA keeps the report and retries: nothing is lost, and the deterministic event
  id keeps the retry from counting twice. Anything else (delays, success notices, complaints,
  auto-replies, unreadable reports, reports about someone else) is answered 250 and logged: the
  sender cannot fix it, and a 5xx would only bounce a bounce.
* Timeouts: ``smtp.read_timeout`` is the longest the client may stay silent (aiosmtpd only
  restarts its timer on each command, which would cut a slow message body), except while we are
  working on its message; ``smtp.write_timeout`` bounds how long a reply may wait for a client
  that does not read.

Shutdown: stop listening, let reports being processed finish (up to the grace period), then
answer 421 to the open sessions and close them; a client cut mid-message retries later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import Counter

from kannon.config import ConfigError, Settings, require
from kannon.config.values import parse_listen_address
from kannon.dsn import parse_message
from kannon.envelope.bounce import parse_bounce_address
from kannon.runtime.clock import utc_now
from kannon.runtime.component import Life
from kannon.runtime.logs import obfuscate
from kannon.smtp_server.inbound import bounces_of, report_message_id
from kannon.wire.stats import Publisher, publish_outcome

log = logging.getLogger("kannon.smtp_server")

RCPTS = Counter("kannon_smtp_rcpt_total", "RCPT commands by result", ["result"])
REPORTS = Counter("kannon_smtp_reports_total", "Messages received, by parsed kind", ["kind"])
BOUNCES = Counter("kannon_smtp_bounces_published_total", "Bounced events published from reports")
IGNORED = Counter(
    "kannon_smtp_report_items_ignored_total", "Report items that produced no Bounced event"
)
PUBLISH_FAILURES = Counter(
    "kannon_smtp_publish_failures_total", "Reports answered 451 because publishing failed"
)

REFUSED_RCPT = "550 5.7.1 Recipient refused: this server accepts only its own bounce addresses"
TOO_MANY_RCPT = "452 4.5.3 Too many recipients"
ACCEPTED = "250 2.0.0 Report accepted"
RETRY_LATER = "451 4.3.0 Report not recorded, please try again later"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down\r\n"
DEFAULT_GRACE = timedelta(seconds=10)


class _Session(SMTP):
    """aiosmtpd's SMTP protocol with idle read timeouts, write timeouts and session tracking."""

    def __init__(
        self,
        handler: ReportHandler,
        *,
        read_timeout: float,
        write_timeout: float,
        sessions: set[_Session],
        **kwargs: object,
    ) -> None:
        super().__init__(handler, timeout=read_timeout, **kwargs)  # type: ignore[arg-type]
        self._write_timeout = write_timeout
        self._sessions = sessions
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if not self._paused:
            self._reset_timeout()
        super().data_received(data)

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
        try:
            await asyncio.wait_for(super().push(status), self._write_timeout)
        except TimeoutError:
            log.info("client stopped reading replies; closing the session")
            self._abort()
        except (ConnectionResetError, BrokenPipeError):
            # The client went away mid-reply. aiosmtpd would let this end the session task with
            # an exception nobody retrieves (a traceback in the log per impatient client).
            self._abort()

    def _abort(self) -> None:
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()  # connection_lost then cancels the session task

    def shut_down(self) -> None:
        if isinstance(self.transport, asyncio.Transport):
            self.transport.write(SHUTTING_DOWN)
            self.transport.close()


class ReportHandler:
    """aiosmtpd hooks: RCPT policy and DATA processing."""

    def __init__(
        self,
        secret: bytes,
        max_recipients: int,
        publisher: Publisher,
        clock: Callable[[], datetime],
    ) -> None:
        self.secret = secret
        self.max_recipients = max_recipients
        self.publisher = publisher
        self.clock = clock
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
        if parse_bounce_address(address, self.secret) is None:
            RCPTS.labels("refused").inc()
            log.info(
                "refused recipient",
                extra={"kv": {"peer": str(session.peer), "rcpt": obfuscate(address)}},
            )
            return REFUSED_RCPT
        RCPTS.labels("accepted").inc()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

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
            "mail_from": envelope.mail_from,
            "size": len(raw),
        }
        try:
            addresses = [
                a
                for a in (parse_bounce_address(r, self.secret) for r in envelope.rcpt_tos)
                if a is not None
            ]
            # Parsing a large report is CPU work: keep it off the loop serving other sessions.
            report = await asyncio.to_thread(parse_message, raw)
            verdict = bounces_of(report, raw, addresses, self.secret, self.clock())
        except Exception:
            log.exception(
                "report could not be processed; accepted and dropped", extra={"kv": context}
            )
            REPORTS.labels("error").inc()
            return ACCEPTED
        REPORTS.labels(report.kind).inc()
        context.update(kind=report.kind, message_id=report_message_id(raw))
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
            BOUNCES.inc()
            log.info(
                "bounce recorded",
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
        self.grace = grace.total_seconds()
        self.handler = ReportHandler(secret, smtp.max_recipients, bus, clock)
        self.sessions: set[_Session] = set()

    def _new_session(self) -> _Session:
        return _Session(
            self.handler,
            read_timeout=self.read_timeout,
            write_timeout=self.write_timeout,
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
            log.info("smtp server stopped")
