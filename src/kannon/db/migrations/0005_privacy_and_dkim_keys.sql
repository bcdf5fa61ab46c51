-- Privacy and compliance (ADR 0033-0035):
-- * the Tracking Policy as the original's HEAD stores it: the Domain's ceiling
--   (`domains.tracking`, new Domains and existing ones `identified`), what a Batch stated
--   (`messages.tracking`, provenance) and the policy frozen on each Delivery
--   (`sending_pool_emails.tracking`; Deliveries already in the Pool get `identified`);
-- * the mode each stored engagement event was recorded under (`stats.tracking_mode`, the wire's
--   TrackingMode number; 0 for events from before), and anonymous engagement events, which are
--   only counted: `anonymous_events` keeps their ids (and no Recipient) so a redelivered one
--   counts once;
-- * Kannon's own one-click unsubscribe endpoint, per Domain;
-- * every DKIM key of a Domain in `dkim_keys` (RSA and Ed25519, pending, signing, retiring),
--   starting with each Domain's current RSA key. `domains.dkim_*` keep mirroring the signing RSA
--   key, as the original's columns.

-- migrate:up
ALTER TABLE domains
    ADD COLUMN tracking JSONB NOT NULL DEFAULT '{"opens": "identified", "links": "identified"}';
ALTER TABLE domains ADD COLUMN one_click_unsubscribe BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE messages ADD COLUMN tracking JSONB NOT NULL DEFAULT '{}';
ALTER TABLE sending_pool_emails
    ADD COLUMN tracking JSONB NOT NULL DEFAULT '{"opens": "identified", "links": "identified"}';
ALTER TABLE stats ADD COLUMN tracking_mode SMALLINT NOT NULL DEFAULT 0;

CREATE TABLE anonymous_events (
    event_id  VARCHAR PRIMARY KEY,
    domain    VARCHAR NOT NULL,
    type      VARCHAR NOT NULL,
    timestamp TIMESTAMP NOT NULL
);
CREATE INDEX anonymous_events_timestamp_idx ON anonymous_events (timestamp);

CREATE TABLE dkim_keys (
    id           SERIAL PRIMARY KEY,
    domain       VARCHAR(254) NOT NULL
        CONSTRAINT dkim_keys_domain_fkey REFERENCES domains (domain) ON DELETE CASCADE,
    selector     VARCHAR(63) NOT NULL,
    algorithm    VARCHAR(20) NOT NULL,
    private_key  VARCHAR NOT NULL,
    public_key   VARCHAR NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    -- NULL: pending (its DNS record not yet confirmed; it does not sign).
    confirmed_at TIMESTAMP NULL,
    -- Set when a successor was confirmed: signs beside it until then, never after.
    retire_at    TIMESTAMP NULL,
    CONSTRAINT dkim_keys_domain_selector_key UNIQUE (domain, selector),
    CONSTRAINT dkim_keys_algorithm_known CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    CONSTRAINT dkim_keys_selector_valid CHECK (selector ~ '^[a-z0-9_-]+(\.[a-z0-9_-]+)*$')
);
INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key, created_at,
                       confirmed_at)
SELECT domain, dkim_selector, 'rsa-sha256', dkim_private_key, dkim_public_key, created_at,
       created_at
FROM domains;

-- migrate:down
DROP TABLE dkim_keys;
DROP TABLE anonymous_events;
ALTER TABLE stats DROP COLUMN tracking_mode;
ALTER TABLE sending_pool_emails DROP COLUMN tracking;
ALTER TABLE messages DROP COLUMN tracking;
ALTER TABLE domains DROP COLUMN one_click_unsubscribe;
ALTER TABLE domains DROP COLUMN tracking;
