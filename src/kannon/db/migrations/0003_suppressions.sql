-- The suppression list (ADR 0027): per Domain, the Recipient addresses Kannon no longer sends to,
-- with why (hard bounce, complaint, unsubscribe, manual, the operator's soft-bounce limit) and
-- the event that caused it. One row per (Domain, address): addresses are stored canonical
-- (domain part lower-cased, IDNA A-label) and compared case-insensitively, as intake compares
-- Recipients (ADR 0020). `text_pattern_ops` lets the same index serve the address-prefix filter.
--
-- `suppression_soft_bounces` remembers soft bounces only while `suppression.soft_bounce_limit`
-- is on, to count them per address within the window.
--
-- A suppressed Recipient of a new Batch is written to the Pool with `reject_reason`
-- 'suppressed': the Validator publishes its Rejected event and deletes the row, so the refusal
-- reaches Stats through the bus in the same transaction as the Batch (no Envelope is built).

-- migrate:up
CREATE TABLE suppressions (
    id           BIGSERIAL PRIMARY KEY,
    domain       VARCHAR(254) NOT NULL
        CONSTRAINT suppressions_domain_fkey REFERENCES domains (domain) ON DELETE CASCADE,
    address      VARCHAR(320) NOT NULL,
    reason       VARCHAR(32) NOT NULL,
    event_type   VARCHAR(32) NOT NULL DEFAULT '',
    event_at     TIMESTAMP NULL,
    status       VARCHAR(32) NOT NULL DEFAULT '',
    reply_code   INTEGER NOT NULL DEFAULT 0,
    diagnostic   VARCHAR(2000) NOT NULL DEFAULT '',
    message_id   VARCHAR NOT NULL DEFAULT '',
    event_id     VARCHAR NULL,
    created_at   TIMESTAMP NOT NULL DEFAULT now(),
    expires_at   TIMESTAMP NULL,
    CONSTRAINT suppressions_reason_known CHECK (
        reason IN ('hard_bounce', 'complaint', 'unsubscribe', 'manual', 'soft_bounce_limit')
    )
);
CREATE UNIQUE INDEX suppressions_domain_address_idx
    ON suppressions (domain, lower(address) text_pattern_ops);
CREATE INDEX suppressions_domain_reason_idx ON suppressions (domain, reason);
CREATE INDEX suppressions_expires_at_idx ON suppressions (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE suppression_soft_bounces (
    event_id   VARCHAR PRIMARY KEY,
    domain     VARCHAR(254) NOT NULL,
    address    VARCHAR(320) NOT NULL,
    bounced_at TIMESTAMP NOT NULL
);
CREATE INDEX suppression_soft_bounces_address_idx
    ON suppression_soft_bounces (domain, address, bounced_at);
CREATE INDEX suppression_soft_bounces_bounced_at_idx ON suppression_soft_bounces (bounced_at);

ALTER TABLE sending_pool_emails ADD COLUMN reject_reason VARCHAR(32) NOT NULL DEFAULT '';

-- migrate:down
ALTER TABLE sending_pool_emails DROP COLUMN reject_reason;
DROP TABLE suppression_soft_bounces;
DROP TABLE suppressions;
