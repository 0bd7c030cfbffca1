-- Version 2: reach (评). Sample plans are rows leased like deliveries, so a crash loses none; readings keep the
-- platform's raw figures beside the common metrics; owned outputs count their reads in hourly buckets.
CREATE TABLE reach_samples (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The delivered publish or update whose post is read: its receipt names the post.
    delivery_id      INTEGER NOT NULL REFERENCES deliveries (id),
    story_id         TEXT    NOT NULL,
    channel          TEXT    NOT NULL,
    age_seconds      REAL    NOT NULL,
    state            TEXT    NOT NULL,
    due_at           REAL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    retry_count      INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires    REAL,
    note             TEXT,
    last_error       TEXT,
    last_error_class TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    UNIQUE (delivery_id, age_seconds)
);
CREATE INDEX reach_samples_pending ON reach_samples (channel, due_at, id) WHERE state = 'queued';
CREATE INDEX reach_samples_in_flight ON reach_samples (channel, lease_expires) WHERE state = 'in_flight';
CREATE INDEX reach_samples_story ON reach_samples (story_id, channel, id);
CREATE TABLE reach_readings (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sample_id   INTEGER NOT NULL REFERENCES reach_samples (id),
    story_id    TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    observed_at REAL    NOT NULL,
    raw         TEXT    NOT NULL,
    -- One reading per sample: a sample reclaimed after its worker died completes once.
    UNIQUE (sample_id)
);
CREATE TABLE reach_points (
    reading_id  INTEGER NOT NULL REFERENCES reach_readings (id),
    story_id    TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    metric      TEXT    NOT NULL,
    observed_at REAL    NOT NULL,
    value       INTEGER NOT NULL,
    PRIMARY KEY (reading_id, metric)
);
CREATE INDEX reach_points_story ON reach_points (story_id, channel, metric, observed_at);
CREATE INDEX reach_points_observed ON reach_points (observed_at);
CREATE TABLE reach_counts (
    story_id     TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    metric       TEXT    NOT NULL,
    bucket_start REAL    NOT NULL,
    value        INTEGER NOT NULL,
    PRIMARY KEY (story_id, channel, metric, bucket_start)
);
CREATE INDEX reach_counts_bucket ON reach_counts (bucket_start);
