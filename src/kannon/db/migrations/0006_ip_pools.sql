-- IP pools (ADR 0039): the pool each Domain sends through (`default` for every existing one),
-- the pool a Batch named instead of its Domain's (NULL: the Domain's), and the pool whose subject
-- a queued Delivery's Envelope was published on, so that the Dispatcher compares its stream
-- sequence with that pool's consumer (NULL: published before pools existed, i.e. `default`).

-- migrate:up
ALTER TABLE domains ADD COLUMN ip_pool VARCHAR(32) NOT NULL DEFAULT 'default';
ALTER TABLE messages ADD COLUMN ip_pool VARCHAR(32) NULL;
ALTER TABLE sending_pool_emails ADD COLUMN envelope_pool VARCHAR(32) NULL;

-- migrate:down
ALTER TABLE sending_pool_emails DROP COLUMN envelope_pool;
ALTER TABLE messages DROP COLUMN ip_pool;
ALTER TABLE domains DROP COLUMN ip_pool;
