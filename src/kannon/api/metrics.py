"""The API's Prometheus metrics, shared by the gRPC and the Connect/gRPC-Web listeners."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
CALLS = Counter(
    "kannon_api_calls_total",
    "API calls answered, by method and gRPC status code (both ports; refusals included)",
    ["method", "code"],
)
CALL_SECONDS = Histogram(
    "kannon_api_call_seconds",
    "Time the API's handlers took to answer, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POOL_DELIVERIES = Gauge(
    "kannon_pool_deliveries",
    "Deliveries in the Pool by status (sampled by the api every 15 s)",
    ["status"],
)
POOL_OLDEST_SECONDS = Gauge(
    "kannon_pool_oldest_seconds",
    "Age of the oldest Pool row of each status (0 when there is none)",
    ["status"],
)
JETSTREAM_PENDING = Gauge(
    "kannon_jetstream_pending",
    "Messages waiting for each durable consumer, not yet delivered (sampled by the api)",
    ["stream", "durable"],
)
JETSTREAM_ACK_PENDING = Gauge(
    "kannon_jetstream_ack_pending",
    "Messages delivered to each durable consumer and not yet acknowledged",
    ["stream", "durable"],
)
JETSTREAM_REDELIVERED = Gauge(
    "kannon_jetstream_redelivered",
    "Messages delivered more than once to each durable consumer, still unacknowledged",
    ["stream", "durable"],
)
