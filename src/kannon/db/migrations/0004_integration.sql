-- Integration surface: idempotency keys on send (ADR 0031) and outcome webhooks
-- (ADR 0032): endpoints per Domain, one delivery row per (endpoint, event) that the webhooks
-- Component works off with retries, and every attempt it made.

-- migrate:up
CREATE TABLE idempotency_keys (
    domain      VARCHAR(254) NOT NULL,
    key         VARCHAR(255) NOT NULL,
    fingerprint BYTEA NOT NULL,
    response    BYTEA NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (domain, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE webhook_endpoints (
    id          VARCHAR(64) PRIMARY KEY,
    domain      VARCHAR(254) NOT NULL,
    url         VARCHAR(2048) NOT NULL,
    event_types TEXT[] NOT NULL DEFAULT '{}',
    enabled     BOOLEAN NOT NULL DEFAULT true,
    secret      VARCHAR(128) NOT NULL,
    description VARCHAR(255) NOT NULL DEFAULT '',
    created_at  TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);
CREATE INDEX webhook_endpoints_domain_idx ON webhook_endpoints (domain);

CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    endpoint_id     VARCHAR(64) NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        VARCHAR(512) NOT NULL,
    webhook_id      VARCHAR(64) NOT NULL,
    domain          VARCHAR(254) NOT NULL,
    event_type      VARCHAR(32) NOT NULL,
    event_at        TIMESTAMP NOT NULL,
    payload         BYTEA NOT NULL,
    status          VARCHAR(16) NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_at      TIMESTAMP NULL,
    created_at      TIMESTAMP NOT NULL,
    finished_at     TIMESTAMP NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_event_at_idx ON webhook_deliveries (endpoint_id, event_at);
CREATE INDEX webhook_deliveries_created_idx ON webhook_deliveries (created_at);

CREATE TABLE webhook_attempts (
    id           BIGSERIAL PRIMARY KEY,
    delivery_id  BIGINT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id  VARCHAR(64) NOT NULL,
    attempted_at TIMESTAMP NOT NULL,
    status_code  INTEGER NULL,
    error        VARCHAR(512) NOT NULL DEFAULT '',
    latency_ms   INTEGER NOT NULL,
    response     VARCHAR(512) NOT NULL DEFAULT ''
);
CREATE INDEX webhook_attempts_endpoint_idx ON webhook_attempts (endpoint_id, attempted_at);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id);

-- migrate:down
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
DROP TABLE idempotency_keys;
