"""The demo sender (`sender.demo_sender`): no network at all, outcomes as a real send would have.

A recipient containing "error" bounces (512, permanent, "error sending email", as the original's
demo sender), everything else is delivered. Deterministic, so demos and tests can aim for either.
"""

from __future__ import annotations

from kannon.envelope.build import Envelope
from kannon.smtp_sender.result import SendResult

DEMO_BOUNCE_CODE = 512
DEMO_BOUNCE_MESSAGE = "error sending email"


class DemoDeliverer:
    async def deliver(self, job: Envelope) -> SendResult:
        if "error" in job.recipient:
            return SendResult.local_bounce(DEMO_BOUNCE_CODE, DEMO_BOUNCE_MESSAGE)
        return SendResult.delivered(250, "demo sender: accepted, not sent", "demo", tls=False)

    async def maintain(self) -> None:
        return None

    async def close(self) -> None:
        return None
