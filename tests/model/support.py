"""Shared by the model tests: a Batch planned the way the API plans it, for tenant t.example."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kannon.model.batch import BatchPlan, SendRequest, plan_batch

BATCH_ID = "msg_1@t.example"


def plan(request: SendRequest, *, now: datetime, **options: Any) -> BatchPlan:
    """`plan_batch` with the API's fixed arguments filled in; `options` (`ceiling`,
    `subject_fields`, `max_recipients`) pass through."""
    return plan_batch(
        request,
        tenant="t.example",
        batch_id=BATCH_ID,
        template_id="template_1@t.example",
        now=now,
        **{"max_recipients": 100, **options},
    )
