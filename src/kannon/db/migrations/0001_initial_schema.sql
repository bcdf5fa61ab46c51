-- The original's tables and columns (its final v0.5.1 shape) plus what Kannon adds (ADR 0005):
-- canonical Domain names, a per-Domain DKIM selector, Pool claim timestamps and the last remote
-- reply (so a spent retry budget ends as Bounced or Failed), idempotent stats events.

-- migrate:up

CREATE TYPE template_type AS ENUM ('transient', 'template');

CREATE TABLE domains (
    id               SERIAL PRIMARY KEY,
    domain           VARCHAR(254) NOT NULL,
    created_at       TIMESTAMP NOT NULL DEFAULT now(),
    dkim_private_key VARCHAR NOT NULL,
    dkim_public_key  VARCHAR NOT NULL,
    dkim_selector    VARCHAR(63) NOT NULL DEFAULT 'smtp',
    CONSTRAINT domains_domain_key UNIQUE (domain),
    CONSTRAINT domains_domain_canonical CHECK (domain ~ '^[a-z0-9_-]+(\.[a-z0-9_-]+)+$'),
    CONSTRAINT domains_dkim_selector_valid CHECK (dkim_selector ~ '^[a-z0-9_-]+(\.[a-z0-9_-]+)*$')
);
CREATE INDEX domains_domain_idx ON domains (domain);

CREATE TABLE api_keys (
    id             VARCHAR(512) PRIMARY KEY,
    name           VARCHAR(100) NOT NULL,
    domain         VARCHAR(512) NOT NULL
        CONSTRAINT api_keys_domain_fkey REFERENCES domains (domain) ON DELETE CASCADE,
    created_at     TIMESTAMP NOT NULL DEFAULT now(),
    expires_at     TIMESTAMP NULL,
    is_active      BOOLEAN NOT NULL DEFAULT true,
    deactivated_at TIMESTAMP NULL,
    key_hash       VARCHAR(64) NOT NULL,
    key_prefix     VARCHAR(10) NOT NULL,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_domain_idx ON api_keys (domain);
CREATE INDEX api_keys_expires_at_idx ON api_keys (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX api_keys_key_hash_active_idx ON api_keys (key_hash) WHERE is_active = true;

CREATE TABLE templates (
    id          SERIAL PRIMARY KEY,
    template_id VARCHAR NOT NULL,
    html        VARCHAR NOT NULL,
    domain      VARCHAR(254) NOT NULL,
    type        template_type NOT NULL DEFAULT 'transient',
    title       VARCHAR(200) NOT NULL DEFAULT '',
    created_at  TIMESTAMP NOT NULL DEFAULT now(),
    updated_at  TIMESTAMP NOT NULL DEFAULT now()
);
CREATE INDEX templates_domain_idx ON templates (domain);
CREATE UNIQUE INDEX templates_template_id_idx ON templates (template_id);
CREATE INDEX templates_domain_template_id_idx ON templates (domain, template_id);
CREATE INDEX template_type_domain_idx ON templates (type, domain);

CREATE TABLE messages (
    message_id   VARCHAR PRIMARY KEY,
    subject      VARCHAR NOT NULL,
    sender_email VARCHAR(320) NOT NULL,
    sender_alias VARCHAR(100) NOT NULL,
    template_id  VARCHAR NOT NULL,
    domain       VARCHAR(254) NOT NULL,
    attachments  JSONB NULL,
    headers      JSONB NOT NULL DEFAULT '{}',
    created_at   TIMESTAMP NOT NULL DEFAULT now()
);
CREATE INDEX messages_message_id_idx ON messages (message_id);
CREATE INDEX messages_domain_idx ON messages (domain);

CREATE TABLE sending_pool_emails (
    id                      SERIAL PRIMARY KEY,
    scheduled_time          TIMESTAMP NOT NULL DEFAULT now(),
    original_scheduled_time TIMESTAMP NOT NULL,
    send_attempts_cnt       INTEGER NOT NULL DEFAULT 0,
    email                   VARCHAR(320) NOT NULL,
    message_id              VARCHAR NOT NULL
        CONSTRAINT sending_pool_emails_message_id_fkey REFERENCES messages (message_id),
    fields                  JSONB NOT NULL DEFAULT '{}',
    status                  VARCHAR(100) NOT NULL DEFAULT 'initializing',
    created_at              TIMESTAMP NOT NULL DEFAULT now(),
    domain                  VARCHAR NOT NULL,
    claimed_at              TIMESTAMP NULL,
    last_reply_code         INTEGER NULL,
    last_reply_msg          VARCHAR NULL
);
CREATE UNIQUE INDEX unique_emails_message_id_idx ON sending_pool_emails (email, message_id);
CREATE INDEX sending_pool_emails_status_scheduled_time_idx ON sending_pool_emails (status, scheduled_time)
    WHERE status IN ('to_validate', 'scheduled');
CREATE INDEX sending_pool_emails_status_claimed_at_idx ON sending_pool_emails (status, claimed_at)
    WHERE status IN ('sending', 'validating');

CREATE TABLE stats (
    id         SERIAL PRIMARY KEY,
    type       VARCHAR NOT NULL,
    email      VARCHAR NOT NULL,
    message_id VARCHAR NOT NULL,
    domain     VARCHAR NOT NULL,
    timestamp  TIMESTAMP NOT NULL DEFAULT now(),
    data       JSONB NOT NULL,
    event_id   VARCHAR NULL
);
CREATE INDEX stats_type_message_id_type_timestamp_idx ON stats (message_id, domain, type, timestamp);
CREATE UNIQUE INDEX stats_email_message_id_type_timestamp_idx
    ON stats (email, message_id, domain, type, timestamp);
CREATE INDEX stats_timestamp_idx ON stats (timestamp);
CREATE INDEX stats_domain_timestamp_idx ON stats (domain, timestamp);
CREATE UNIQUE INDEX stats_event_id_idx ON stats (event_id) WHERE event_id IS NOT NULL;

CREATE TABLE aggregated_stats (
    domain    VARCHAR NOT NULL,
    timestamp TIMESTAMP NOT NULL,
    type      VARCHAR NOT NULL,
    count     BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT aggregated_stats_pkey PRIMARY KEY (domain, timestamp, type)
);

-- Tracking-token keys. The original stored RSA-4096 PEM pairs here for RS512 JWTs; we sign tokens
-- with HMAC-SHA256 (ADR 0004), so private_key holds the base64 secret and public_key names the
-- algorithm.
CREATE TABLE stats_keys (
    id              VARCHAR PRIMARY KEY,
    private_key     VARCHAR NOT NULL,
    public_key      VARCHAR NOT NULL,
    creation_time   TIMESTAMP NOT NULL DEFAULT now(),
    expiration_time TIMESTAMP NOT NULL
);

-- migrate:down
DROP TABLE stats_keys;
DROP TABLE aggregated_stats;
DROP TABLE stats;
DROP TABLE sending_pool_emails;
DROP TABLE messages;
DROP TABLE templates;
DROP TABLE api_keys;
DROP TABLE domains;
DROP TYPE template_type;
