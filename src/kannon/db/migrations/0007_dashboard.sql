-- The analytics dashboard (ADR 0043-0045):
-- * `dashboard_keys`: the secret that signs dashboard session cookies, created once by the first
--   API replica that needs it, so every replica accepts the cookies of the others and a restart
--   signs nobody out;
-- * an index on stats (domain, type, timestamp): the Bounces and Engagement pages read one type of
--   one Domain over a time range (latest bounces, bounce reasons, most-clicked links) without
--   walking every other event type of that Domain. The overview reads `aggregated_stats` only,
--   whose primary key (domain, timestamp, type) already serves it.

-- migrate:up
CREATE TABLE dashboard_keys (
    id         SMALLINT PRIMARY KEY CHECK (id = 1),
    secret     BYTEA NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT now()
);
CREATE INDEX stats_domain_type_timestamp_idx ON stats (domain, type, timestamp);

-- migrate:down
DROP INDEX stats_domain_type_timestamp_idx;
DROP TABLE dashboard_keys;
