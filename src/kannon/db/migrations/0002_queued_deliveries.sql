-- A Delivery whose Envelope is published waits in its own status, `queued`, with the time it was
-- queued and the `kannon-sending` stream sequence of its Envelope. `sending` now means only
-- "claimed by a Dispatcher, not yet published": Reclaim takes back only those, so an Envelope
-- still waiting in the stream is never dispatched a second time (ADR 0025).

-- migrate:up
ALTER TABLE sending_pool_emails ADD COLUMN queued_at TIMESTAMP NULL;
ALTER TABLE sending_pool_emails ADD COLUMN envelope_seq BIGINT NULL;
CREATE INDEX sending_pool_emails_queued_idx ON sending_pool_emails (queued_at)
    WHERE status = 'queued';

-- migrate:down
UPDATE sending_pool_emails SET status = 'sending', claimed_at = queued_at WHERE status = 'queued';
DROP INDEX sending_pool_emails_queued_idx;
ALTER TABLE sending_pool_emails DROP COLUMN envelope_seq;
ALTER TABLE sending_pool_emails DROP COLUMN queued_at;
