-- Version 3: two lookups that read whole tables on a large archive. A story's reach page reads its readings by
-- story (reach_readings had no index on story_id); the key purge finds expired keys (kv had none on expires_at).
CREATE INDEX reach_readings_story ON reach_readings (story_id, channel, observed_at);
CREATE INDEX kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL;
