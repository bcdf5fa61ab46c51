"""Constants shared by the envelope tests (a Domain, a Batch, a fixed clock, keys)."""

from __future__ import annotations

from datetime import UTC, datetime

from kannon.envelope import TrackingKey

DOMAIN = "k.example.com"
SELECTOR = "smtp"
BATCH_ID = "msg_k9x2m4p7q1w8e5r3t6y0u2i4@k.example.com"
# In the past: dkimpy refuses signatures whose t= lies in the future.
NOW = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)
TRACKING_KEY = TrackingKey("key_test", b"t" * 32)
BOUNCE_SECRET = b"b" * 32
