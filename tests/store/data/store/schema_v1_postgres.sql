-- The schema the postgres store created at version 1, frozen from the code before the SQL moved into
-- syndicate/store/sql/ (commit 04417de): an existing database looks exactly like this. Never edit it.
CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ);
CREATE TABLE stories (
    story_id     TEXT             NOT NULL,
    version      INTEGER          NOT NULL,
    content_hash TEXT             NOT NULL,
    pubstatus    TEXT             NOT NULL,
    body         TEXT             NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (story_id, version)
);
CREATE TABLE deliveries (
    id                 BIGSERIAL PRIMARY KEY,
    story_id           TEXT             NOT NULL,
    version            INTEGER          NOT NULL,
    channel            TEXT             NOT NULL,
    action             TEXT             NOT NULL,
    state              TEXT             NOT NULL,
    payload            TEXT,
    checkpoint         TEXT             NOT NULL DEFAULT '{}',
    receipt            TEXT,
    attempts           INTEGER          NOT NULL DEFAULT 0,
    retry_count        INTEGER          NOT NULL DEFAULT 0,
    due_at             DOUBLE PRECISION,
    reconcile          BOOLEAN          NOT NULL DEFAULT FALSE,
    lease_owner        TEXT,
    lease_expires      DOUBLE PRECISION,
    note               TEXT,
    last_error         TEXT,
    last_error_class   TEXT,
    last_platform_code TEXT,
    created_at         DOUBLE PRECISION NOT NULL,
    updated_at         DOUBLE PRECISION NOT NULL,
    UNIQUE (story_id, version, channel, action)
);
CREATE INDEX deliveries_pending ON deliveries (channel, due_at, id) WHERE state IN ('queued', 'retry_wait');
CREATE INDEX deliveries_in_flight ON deliveries (channel, lease_expires) WHERE state = 'in_flight';
CREATE INDEX deliveries_story_channel ON deliveries (story_id, channel, id);
CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at);
CREATE TABLE attempts (
    id            BIGSERIAL PRIMARY KEY,
    delivery_id   BIGINT           NOT NULL REFERENCES deliveries (id),
    number        INTEGER          NOT NULL,
    worker        TEXT             NOT NULL,
    started_at    DOUBLE PRECISION NOT NULL,
    finished_at   DOUBLE PRECISION,
    outcome       TEXT,
    error_class   TEXT,
    message       TEXT,
    platform_code TEXT,
    duration_ms   DOUBLE PRECISION
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, number);
CREATE TABLE channel_state (
    channel      TEXT PRIMARY KEY,
    paused_until DOUBLE PRECISION,
    reason       TEXT,
    updated_at   DOUBLE PRECISION NOT NULL
);
CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT             NOT NULL,
    expires_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL
);
INSERT INTO schema_migrations (version, applied_at) VALUES (1, now());
