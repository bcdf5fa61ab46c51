"""The API's Prometheus metrics, shared by the gRPC and the Connect/gRPC-Web listeners."""

from __future__ import annotations

from prometheus_client import Counter

REQUESTS = Counter(
    "kannon_api_requests_total",
    "API calls received, by protocol (grpc, connect, grpc-web), codec and method",
    ["protocol", "codec", "method"],
)
HTTP_FAILURES = Counter(
    "kannon_api_http_failures_total",
    "Connect and gRPC-Web calls that ended with an error, by Connect code",
    ["protocol", "code"],
)
IDEMPOTENT_REPLAYS = Counter(
    "kannon_api_idempotent_replays_total",
    "Send calls answered with the first response of their idempotency key",
    ["method"],
)
