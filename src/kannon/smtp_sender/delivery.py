"""One Envelope over SMTP: to the recipient's MX hosts, or through the configured relay.

Owns the SMTP dialogue (aiosmtplib): connect (from `sender.source_address` when set, so a node
of an IP pool sends from its own address), EHLO as `sender.hostname` (HELO when EHLO is
refused), STARTTLS, relay AUTH, MAIL FROM the bounce address, RCPT, DATA; reuse of open
sessions through the `SessionCache` (`sessions.py`; RSET only after a transaction left
unfinished); MAIL, RCPT and DATA pipelined when the server offers PIPELINING (`pipelining.py`,
ADR 0053); and the reading of every way this can end as a `SendResult`. Nothing here publishes
or acks: the Component does.

Direct delivery tries MX hosts in preference order and, per host, each address. It moves on to
the next host only while nobody said anything about the message (connection refused, dropped,
timed out, greeting refused); a reply to MAIL/RCPT/DATA is the receiving domain's verdict and
is final, and a connection lost after the message was transmitted may mean it was accepted, so
no other host is tried then either.

TLS to an MX is opportunistic, as is usual between MTAs: STARTTLS whenever offered, with
certificate verification first; when the certificate does not verify, the session is redone
with an unverified handshake (still encrypted) and a log line. The relay gets strict TLS: it
receives our credentials. A recipient domain's MTA-STS policy (`mta_sts.py`, when enabled) may
narrow the MX hosts and, in `enforce` mode, make TLS mandatory and verified for them; such
sessions are cached apart from opportunistic ones.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import aiosmtplib
from prometheus_client import Counter

from kannon.envelope.build import Envelope
from kannon.smtp_sender import pipelining
from kannon.smtp_sender.mta_sts import MtaSts, TlsRule
from kannon.smtp_sender.mx import MxHost, MxResolver, NullMx, Routes, ascii_domain
from kannon.smtp_sender.result import Kind, SendResult
from kannon.smtp_sender.sessions import Connection, SessionCache, discard
from kannon.smtp_sender.shaping import LEASE_WAIT, Deferral, Permit, Shaper

log = logging.getLogger("kannon.sender")

CONNECTIONS = Counter("kannon_sender_smtp_connections_total", "SMTP sessions opened", ["tls"])

# Forget hosts with unverifiable certificates now and then, so a host that fixes its
# certificate gets verified again and the set cannot grow without bound.
UNVERIFIABLE_MAX = 10_000

RelayTLS = Literal["starttls", "tls", "none"]


class Deliverer(Protocol):
    async def deliver(self, job: Envelope) -> SendResult: ...

    async def maintain(self) -> None:
        """Periodic housekeeping (close expired idle sessions)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: RelayTLS


@dataclass
class _Attempt:
    """One delivery attempt: the Envelope, its recipient in ASCII-domain form, and how far the
    attempt got (read when the overall deadline cuts it short)."""

    job: Envelope
    recipient: str
    remote: str = ""
    in_data: bool = False


class SmtpDeliverer:
    def __init__(
        self,
        *,
        hostname: str,
        port: int,
        resolver: MxResolver,
        sessions: SessionCache,
        connect_timeout: float,
        command_timeout: float,
        deadline: float,
        relay: Relay | None = None,
        mta_sts: MtaSts | None = None,
        shaper: Shaper | None = None,
        source_address: str | None = None,
    ) -> None:
        self.hostname = hostname
        self.shaper = shaper if shaper is not None and shaper.active else None
        # (address, any port) for the socket to bind to; None: the OS picks the address.
        self.source: tuple[str, int] | None = (
            (source_address, 0) if source_address is not None else None
        )
        self.port = port
        self.resolver = resolver
        self.sessions = sessions
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.deadline = deadline
        self.relay = relay
        self.mta_sts = mta_sts
        # Built once: loading the system trust store costs milliseconds per context.
        self._verified = ssl.create_default_context()
        self._unverified = ssl.create_default_context()
        self._unverified.check_hostname = False
        self._unverified.verify_mode = ssl.CERT_NONE
        self._unverifiable: set[str] = set()

    async def deliver(self, job: Envelope) -> SendResult:
        local, at, domain = job.recipient.rpartition("@")
        if not at or not local or not domain:
            return SendResult.local_bounce(510, f"5.1.3 bad recipient address {job.recipient!r}")
        try:
            domain = ascii_domain(domain)
        except ValueError as exc:
            return SendResult.local_bounce(512, f"5.1.2 {exc}")
        recipient = f"{local}@{domain}"
        attempt = _Attempt(job, recipient)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline):
                if self.relay is not None:
                    return await self._via_relay(self.relay, attempt)
                return await self._via_mx(domain, attempt)
        except TimeoutError:
            # Only the overall deadline gets here: every SMTP step catches its own timeouts.
            return SendResult.no_answer(
                f"delivery did not finish within {self.deadline:.0f}s"
                + (
                    " (cut off during DATA: the message may have been accepted)"
                    if attempt.in_data
                    else ""
                ),
                attempt.remote,
                possibly_delivered=attempt.in_data,
            )
        finally:
            if log.isEnabledFor(logging.DEBUG):  # no line, no work building it
                log.debug(
                    "delivery attempt",
                    extra={
                        "kv": {
                            "email_id": job.email_id,
                            "seconds": round(time.monotonic() - started, 4),
                        }
                    },
                )

    async def maintain(self) -> None:
        await self.sessions.reap()
        if self.shaper is not None:
            await self.shaper.maintain()

    async def close(self) -> None:
        await self.sessions.close_all()
        if self.shaper is not None:
            await self.shaper.close()

    # -- direct delivery -------------------------------------------------------------------

    async def _via_mx(self, domain: str, attempt: _Attempt) -> SendResult:
        lookup = await self.resolver.routes(domain)
        if isinstance(lookup, NullMx):
            return SendResult.local_bounce(
                550, f"5.1.10 {domain} accepts no mail (null MX, RFC 7505)"
            )
        if not isinstance(lookup, Routes):
            return SendResult.no_answer(lookup.message)
        hosts, rule = lookup.hosts, None
        if self.mta_sts is not None:
            plan = await self.mta_sts.plan(domain, hosts)
            if plan.refusal:
                return SendResult.no_answer(plan.refusal)
            hosts, rule = plan.hosts, plan.rule
        destination = None
        if self.shaper is not None and hosts:
            destination = self.shaper.destination(domain, hosts[0].name)
        if self.shaper is None or destination is None:
            return await self._via_hosts(domain, hosts, attempt, rule=rule, permit=None)
        admitted = await self.shaper.admit(destination)
        if isinstance(admitted, Deferral):
            return SendResult.deferred(admitted.delay, admitted.reason)
        result = await self._via_hosts(domain, hosts, attempt, rule=rule, permit=admitted)
        await self.shaper.observe(admitted, result, connected=bool(attempt.remote))
        return result

    async def _via_hosts(
        self,
        domain: str,
        hosts: Sequence[MxHost],
        attempt: _Attempt,
        *,
        rule: TlsRule | None,
        permit: Permit | None,
    ) -> SendResult:
        failures: list[SendResult] = []
        for host in hosts:
            result = await self._via_host(host.name, attempt, rule, permit=permit)
            if result.kind is Kind.DEFERRED:
                return result
            if result.kind in (Kind.NO_ANSWER, Kind.SESSION_REFUSED) and not (
                result.possibly_delivered
            ):
                failures.append(result)
                continue
            return result
        # Nobody took responsibility. An SMTP reply, even one refusing the session, tells the
        # Dispatcher more than silence does, so the last one wins over connection errors.
        answered = [f for f in failures if f.kind is Kind.SESSION_REFUSED]
        if answered:
            return answered[-1]
        detail = "; ".join(f.message for f in failures) or "no MX host"
        return SendResult.no_answer(f"no MX host of {domain} answered: {detail}")

    async def _via_host(
        self,
        host: str,
        attempt: _Attempt,
        rule: TlsRule | None,
        *,
        permit: Permit | None,
    ) -> SendResult:
        # An enforced policy may only reuse sessions opened under it (verified TLS).
        key = f"{host}:{self.port}" + (" mta-sts" if rule is not None and rule.enforce else "")
        if permit is None:
            return await self._send_on(
                key, lambda: self._open_mx(host, key, attempt, rule), attempt
            )
        return await self._send_on(
            key, lambda: self._open_shaped(permit, host, key, attempt, rule), attempt
        )

    async def _open_shaped(
        self, permit: Permit, host: str, key: str, attempt: _Attempt, rule: TlsRule | None
    ) -> Connection | SendResult:
        """A new session under a connection lease of the destination; while all its
        connections are taken, a session of ours that comes free will do. Deferred when
        neither happens within `LEASE_WAIT`."""
        assert self.shaper is not None
        shaper = self.shaper
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_WAIT
        pause = 0.02
        while True:
            lease = await shaper.lease(permit)
            if isinstance(lease, Deferral):
                return SendResult.deferred(lease.delay, lease.reason)
            if lease is not None:
                opened = await self._open_mx(host, key, attempt, rule)
                if not isinstance(opened, Connection):
                    shaper.release(permit.destination, lease)
                    return opened
                opened.max_messages = permit.destination.limits.per_connection
                opened.on_close = functools.partial(shaper.release, permit.destination, lease)
                return opened
            reused = await self._reusable(key)
            if reused is not None:
                return reused
            if loop.time() >= deadline:
                deferral = shaper.deferral_for_connections(permit)
                return SendResult.deferred(deferral.delay, deferral.reason)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    async def _send_on(
        self,
        key: str,
        open_new: Callable[[], Awaitable[Connection | SendResult]],
        attempt: _Attempt,
    ) -> SendResult:
        """One transaction on a reused session for `key`, or on a new one from `open_new`."""
        for _ in range(2):
            conn = await self._reusable(key)
            reused = conn is not None
            if conn is None:
                opened = await open_new()
                if isinstance(opened, SendResult):
                    return opened
                conn = opened
            result = await self._transact(conn, attempt)
            if reused and result.kind is Kind.NO_ANSWER and not result.possibly_delivered:
                # The server dropped a session it had idling; that says nothing about this
                # message. Once more on a fresh connection.
                continue
            return result
        return result

    async def _open_mx(
        self, host: str, key: str, attempt: _Attempt, rule: TlsRule | None
    ) -> Connection | SendResult:
        found = await self.resolver.addresses(host)
        if not found.addresses:
            return SendResult.no_answer(found.error, host)
        failure: SendResult | None = None
        for address in found.addresses:
            remote = f"{host}[{address}]:{self.port}"
            attempt.remote = remote
            opened = await self._connect_mx(host, address, key, remote, rule)
            if isinstance(opened, Connection):
                return opened
            failure = opened
        assert failure is not None
        return failure

    async def _connect_mx(
        self, host: str, address: str, key: str, remote: str, rule: TlsRule | None = None
    ) -> Connection | SendResult:
        verify = host not in self._unverifiable
        client = self._client(address, self.port)
        try:
            await client.connect(timeout=self.connect_timeout)
            await self._ehlo(client)
            tls = False
            if client.supports_extension("starttls"):
                context = self._verified if verify else self._unverified
                if rule is not None:
                    context = rule.context
                try:
                    await client.starttls(server_hostname=host, tls_context=context)
                except ssl.SSLCertVerificationError as exc:
                    client.close()
                    if rule is not None:
                        reason = rule.violated(
                            "certificate", f"{remote}: certificate: {exc.verify_message}"
                        )
                        if rule.enforce:
                            return SendResult.no_answer(reason, remote)
                    log.info(
                        "certificate not verifiable; using unverified TLS",
                        extra={"kv": {"remote": remote, "error": exc.verify_message}},
                    )
                    if len(self._unverifiable) >= UNVERIFIABLE_MAX:
                        self._unverifiable.clear()
                    self._unverifiable.add(host)
                    return await self._connect_mx(host, address, key, remote)
                tls = True
                await self._ehlo(client)
            elif rule is not None:
                reason = rule.violated("starttls", f"{remote} does not offer STARTTLS")
                if rule.enforce:
                    client.close()
                    return SendResult.no_answer(reason, remote)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return _failed_session(client, remote, exc)
        return _opened(client, key, remote, tls=tls)

    # -- relay -----------------------------------------------------------------------------

    async def _via_relay(self, relay: Relay, attempt: _Attempt) -> SendResult:
        key = f"relay:{relay.host}:{relay.port}"
        return await self._send_on(key, lambda: self._connect_relay(relay, key, attempt), attempt)

    async def _connect_relay(
        self, relay: Relay, key: str, attempt: _Attempt
    ) -> Connection | SendResult:
        remote = f"relay {relay.host}:{relay.port}"
        attempt.remote = remote
        implicit = relay.tls == "tls"
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            local_hostname=self.hostname,
            source_address=self.source,
            timeout=self.command_timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=self._verified if implicit else None,
        )
        try:
            await client.connect(timeout=self.connect_timeout)
            await self._ehlo(client)
            if relay.tls == "starttls":
                if not client.supports_extension("starttls"):
                    client.close()
                    # Never fall back to plaintext towards the relay: it gets our password.
                    return SendResult.no_answer(
                        f"{remote} does not offer STARTTLS (sender.relay.tls is starttls)",
                        remote,
                    )
                await client.starttls(server_hostname=relay.host, tls_context=self._verified)
                await self._ehlo(client)
            if relay.username:
                await client.login(relay.username, relay.password or "")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return _failed_session(client, remote, exc)
        tls = implicit or relay.tls == "starttls"
        return _opened(client, key, remote, tls=tls)

    # -- the transaction -------------------------------------------------------------------

    async def _reusable(self, key: str) -> Connection | None:
        conn = await self.sessions.take(key)
        if conn is None or not conn.needs_reset or pipelining.offered(conn.client):
            # After an accepted message the next MAIL starts a new transaction by itself; a
            # session that went away meanwhile shows at MAIL, before anything was sent, and
            # `_send_on` tries a fresh one (ADR 0053). With PIPELINING a needed RSET goes out
            # in the same write as MAIL.
            return conn
        try:
            # RSET clears what the previous, unfinished transaction left behind.
            await conn.client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            discard(conn)
            return None
        conn.needs_reset = False
        return conn

    async def _transact(self, conn: Connection, attempt: _Attempt) -> SendResult:
        job, recipient = attempt.job, attempt.recipient
        client = conn.client
        attempt.remote = conn.remote
        keep = False
        try:
            options: list[str] = []
            encoding = "ascii"
            if not (recipient.isascii() and job.return_path.isascii()):
                if not client.supports_extension("smtputf8"):
                    keep = True
                    return SendResult.refused(
                        553,
                        f"5.6.7 {conn.remote} does not support SMTPUTF8, needed for {recipient}",
                        conn.remote,
                        tls=conn.tls,
                    )
                options.append("SMTPUTF8")
                encoding = "utf-8"
            if client.supports_extension("8bitmime") and not job.body.isascii():
                options.append("BODY=8BITMIME")
            command = "MAIL"  # which reply refused the message decides hard or soft
            try:
                if pipelining.offered(client):
                    reset, conn.needs_reset = conn.needs_reset, True
                    reply = await pipelining.transact(
                        client,
                        sender=job.return_path,
                        recipient=recipient,
                        body=job.body,
                        options=options,
                        encoding=encoding,
                        reset=reset,
                        before_message=functools.partial(setattr, attempt, "in_data", True),
                    )
                else:
                    conn.needs_reset = True
                    await client.mail(job.return_path, options=options, encoding=encoding)
                    command = "RCPT"
                    await client.rcpt(recipient, encoding=encoding)
                    command = "DATA"
                    attempt.in_data = True
                    reply = await client.data(job.body)
            except aiosmtplib.SMTPResponseException as exc:
                attempt.in_data = False
                keep = True
                return SendResult.refused(
                    exc.code, exc.message, conn.remote, tls=conn.tls, command=_command(exc, command)
                )
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                ambiguous = attempt.in_data
                attempt.in_data = False
                note = " (after DATA: the message may have been accepted)" if ambiguous else ""
                return SendResult.no_answer(
                    f"{conn.remote}: {_describe(exc)}{note}",
                    conn.remote,
                    possibly_delivered=ambiguous,
                )
            attempt.in_data = False
            conn.messages += 1
            conn.needs_reset = False
            keep = True
            return SendResult.delivered(reply.code, reply.message, conn.remote, tls=conn.tls)
        finally:
            # Also reached on cancellation (overall deadline, shutdown): a session in an unknown
            # state is never put back.
            if keep and conn.usable:
                await self.sessions.put(conn)
            else:
                discard(conn)

    # -- helpers ---------------------------------------------------------------------------

    def _client(self, address: str, port: int) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=address,
            port=port,
            local_hostname=self.hostname,
            source_address=self.source,
            timeout=self.command_timeout,
            start_tls=False,
        )

    async def _ehlo(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            # RFC 5321 §3.2: a server that does not speak ESMTP still takes HELO.
            await client.helo()


def _command(exc: aiosmtplib.SMTPResponseException, reached: str) -> str:
    """The command whose reply refused the message: pipelined replies come back together, so
    the exception's kind says which one it was; one by one, the last command sent."""
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return "MAIL"
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return "RCPT"
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return "DATA"
    return reached


def _opened(client: aiosmtplib.SMTP, key: str, remote: str, *, tls: bool) -> Connection:
    CONNECTIONS.labels("yes" if tls else "no").inc()
    return Connection(client, key, remote, tls)


def _failed_session(client: aiosmtplib.SMTP, remote: str, exc: BaseException) -> SendResult:
    """Close a session that could not be opened; what the attempt learnt from it: the server's
    refusal (an SMTP reply), or that nobody answered."""
    client.close()
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SendResult.session_refused(exc.code, f"{remote}: {exc.message}", remote)
    return SendResult.no_answer(f"{remote}: {_describe(exc)}", remote)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return f"connection lost ({exc})" if str(exc) else "connection lost"
    return str(exc) or type(exc).__name__
