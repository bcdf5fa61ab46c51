"""The pipeline plus the two Components that hear back from the outside world, for the
engagement tests: the Tracker (open pixel, click redirect) and the SMTPServer (DSNs).

`launch_engaged` starts the usual `Pipeline` and then a Tracker and an SmtpServer built from the
pipeline's own Settings object, so the Dispatcher writes links to the very Tracker that serves
them and the SmtpServer verifies bounce addresses with the secret the SMTPSender signed them
with. The Dispatcher reads `tracker.base_url` when it is built, so the Tracker's port must be
known before the Settings exist: `reserved_port` holds a loopback port (bound with SO_REUSEADDR,
not listening, so Linux still lets the Tracker bind it and nobody else can take it meanwhile)
until the Tracker listens on it. The SmtpServer listens on 127.0.0.1:0.

Also here: Stats through the real gRPC client (`get_stats`), the number of events the stats
stream holds (the bus fixture starts it empty), an RFC 3464 report as MTAs write them (`dsn`),
and an smtplib conversation with the SmtpServer (`submit_report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.admin.apiv1 import adminapiv1_pb2_grpc
from kannon.pb.stats.apiv1 import statsapiv1_pb2 as stats_pb
from kannon.pb.stats.apiv1 import statsapiv1_pb2_grpc
from kannon.pb.tracking.types import tracking_pb2
from kannon.smtp_server.component import SmtpServer
from kannon.tracker.component import Tracker
from tests.e2e.conftest import Launch
from tests.e2e.pipeline import MX_HOST, TENANT, Pipeline
from tests.support import start_component

BOUNCE_HOST = f"bounces.{TENANT}"
REPORTING_MTA = MX_HOST


@contextlib.contextmanager
def reserved_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A free TCP port on `host`, kept from other processes until the block ends.

    The socket is bound with SO_REUSEADDR and never listens: on Linux a second SO_REUSEADDR
    socket (the Tracker's) may bind the same address as long as neither listens, while any other
    bind, and the kernel's choice of a port for bind(0), steer clear of it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@dataclass
class Engaged:
    pipeline: Pipeline
    tracker: Tracker
    smtp: SmtpServer

    @property
    def tracker_base(self) -> str:
        return f"http://127.0.0.1:{self.tracker.port}"


async def launch_engaged(launch: Launch, **overrides: Any) -> Engaged:
    """The pipeline, then a Tracker and an SmtpServer on its Settings (stopped, newest first,
    with the pipeline by the `launch` fixture)."""
    with reserved_port() as port:
        pipeline = await launch(
            tracker_host="127.0.0.1",
            tracker_port=str(port),
            tracker_base_url=f"http://127.0.0.1:{port}",
            smtp_address="127.0.0.1:0",
            smtp_domain=BOUNCE_HOST,
            **overrides,
        )
        tracker = Tracker(pipeline.settings, pipeline.pool, pipeline.bus)
        pipeline.components.append(await start_component(tracker))
    assert tracker.port == port
    smtp = SmtpServer(pipeline.settings, pipeline.bus)
    pipeline.components.append(await start_component(smtp))
    assert smtp.port != 0
    return Engaged(pipeline, tracker, smtp)


async def get_stats(pipeline: Pipeline, email: str) -> list[Any]:
    """GetStats (v1, Basic auth with the tenant's API key) for the last and next hour, the rows
    of `email` in the order the API gives them (newest first)."""
    stub: Any = statsapiv1_pb2_grpc.StatsApiV1Stub(pipeline.channel)
    now = datetime.now(UTC)
    request = stats_pb.GetStatsReq(
        domain=TENANT,
        from_date=now - timedelta(hours=1),
        to_date=now + timedelta(hours=1),
        take=1000,
    )
    res = await stub.GetStats(request, metadata=pipeline.credentials)
    assert res.total == len(res.stats)
    return [row for row in res.stats if row.email == email]


def dsn(
    *,
    bounce_address: str,
    recipient: str,
    returned_headers: bytes,
    message_id: str,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 user unknown",
) -> bytes:
    """An RFC 3464 multipart/report (report-type=delivery-status) about one recipient, sent
    back to `bounce_address` with the returned message's header block."""
    boundary = "=_report_boundary_7f3a"
    extra = "Will-Retry-Until: Mon, 1 Jun 2099 12:00:00 +0000\r\n" if action == "delayed" else ""
    human = (
        "Your message could not be delivered."
        if action == "failed"
        else "Delivery of your message has been delayed; we will keep trying."
    )
    text = (
        f"From: Mail Delivery Subsystem <MAILER-DAEMON@{REPORTING_MTA}>\r\n"
        f"To: <{bounce_address}>\r\n"
        "Subject: Delivery Status Notification\r\n"
        "Date: Sun, 1 Jun 2025 12:00:01 +0000\r\n"
        f"Message-ID: {message_id}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        f"{human}\r\n"
        f"<{recipient}>: {diagnostic.partition(';')[2].strip()}\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        f"Reporting-MTA: dns; {REPORTING_MTA}\r\n"
        "Arrival-Date: Sun, 1 Jun 2025 12:00:00 +0000\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Remote-MTA: dns; {REPORTING_MTA}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n"
        f"{extra}"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
    )
    return text.encode() + returned_headers + f"\r\n\r\n--{boundary}--\r\n".encode()


@dataclass(frozen=True)
class Conversation:
    """The replies to RCPT and to DATA (the final reply when the message was sent, else the
    reply to the bare DATA command) of one MAIL FROM:<> transaction."""

    rcpt: tuple[int, bytes]
    data: tuple[int, bytes]


async def submit_report(port: int, rcpt: str, body: bytes) -> Conversation:
    """Send `body` as a DSN is sent (null reverse path) to `rcpt` with smtplib; when RCPT is
    refused, DATA is still tried, to see it refused too."""

    def run() -> Conversation:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
            client.ehlo(REPORTING_MTA)
            code, text = client.mail("")
            assert code == 250, (code, text)
            rcpt_reply = client.rcpt(rcpt)
            if rcpt_reply[0] == 250:
                return Conversation(rcpt_reply, client.data(body))
            # No accepted recipient: the server must not take the message either.
            return Conversation(rcpt_reply, client.docmd("DATA"))

    return await asyncio.to_thread(run)


async def admin(pipeline: Pipeline, method: str, request: Any) -> Any:
    """One Admin API call with the operator token, through the real gRPC client."""
    from tests.e2e.pipeline import ADMIN_TOKEN

    stub: Any = adminapiv1_pb2_grpc.ApiStub(pipeline.channel)
    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    return await getattr(stub, method)(request, metadata=md)


async def set_tracking_ceiling(pipeline: Pipeline, opens: int, links: int) -> Any:
    """SetTrackingPolicy for the tenant Domain (modes as the wire's numbers)."""
    # The wire's numbers as such, unknown ones included (the stubs type them as TrackingMode).
    policy = tracking_pb2.TrackingPolicy(opens=opens, links=links)  # type: ignore[arg-type]  # ints
    request = admin_pb.SetTrackingPolicyReq(domain=TENANT, tracking=policy)
    return (await admin(pipeline, "SetTrackingPolicy", request)).domain
