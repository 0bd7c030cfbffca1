-- The statements both dialects run as written, by name (syndicate/store/queries.py merges this file with
-- queries_<dialect>.sql; a name in both is an error, so each statement has one home).
-- Parameters are :name; {PENDING_STATES} and {OPEN_STATES} are literal state lists filled in at load.
-- A statement goes to the dialect's own file only when the dialects need different SQL for it.

-- migrations ----------------------------------------------------------------------------------------------------

-- name: applied_migrations
SELECT version FROM schema_migrations;

-- name: schema_version
SELECT max(version) FROM schema_migrations;

-- stories and fan-out -------------------------------------------------------------------------------------------

-- name: newest_story_version
SELECT version, content_hash FROM stories WHERE story_id = :story_id ORDER BY version DESC LIMIT 1;

-- name: story_version_hash
SELECT content_hash FROM stories WHERE story_id = :story_id AND version = :version;

-- name: deliveries_of_version
SELECT * FROM delivery_rows WHERE story_id = :story_id AND version = :version ORDER BY id;

-- name: insert_story
INSERT INTO stories (story_id, version, content_hash, pubstatus, body, received_at)
VALUES (:story_id, :version, :content_hash, :pubstatus, :body, :now);

-- name: insert_delivery
INSERT INTO deliveries (story_id, version, channel, action, state, due_at, note, created_at, updated_at)
VALUES (:story_id, :version, :channel, :action, :state, :due_at, :note, :now, :now)
RETURNING id;

-- Written with the delivery; again only when the engine re-renders it (an update whose publish never landed).
-- name: save_payload
INSERT INTO payloads (delivery_id, body) VALUES (:id, :body)
ON CONFLICT (delivery_id) DO UPDATE SET body = excluded.body;

-- A story's first acceptance is the received_at of its oldest version row (versions are never deleted).
-- name: newest_story
SELECT s.*, (SELECT min(f.received_at) FROM stories f WHERE f.story_id = s.story_id) AS first_accepted_at
FROM stories s WHERE s.story_id = :story_id ORDER BY s.version DESC LIMIT 1;

-- name: story_version
SELECT s.*, (SELECT min(f.received_at) FROM stories f WHERE f.story_id = s.story_id) AS first_accepted_at
FROM stories s WHERE s.story_id = :story_id AND s.version = :version;

-- name: first_accepted
SELECT min(received_at) AS first_accepted_at FROM stories WHERE story_id = :story_id;

-- claiming ------------------------------------------------------------------------------------------------------

-- name: live_receipt
SELECT action, receipt FROM deliveries
WHERE story_id = :story_id AND channel = :channel AND id < :id AND state = 'delivered'
ORDER BY id DESC LIMIT 1;

-- leases and outcomes -------------------------------------------------------------------------------------------

-- name: save_checkpoint
UPDATE deliveries SET checkpoint = :checkpoint WHERE id = :id AND state = 'in_flight' AND lease_owner = :worker;

-- name: count_in_flight_all
SELECT count(*) FROM deliveries WHERE state = 'in_flight';

-- operator repair -----------------------------------------------------------------------------------------------

-- name: insert_operator_attempt
INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, message)
VALUES (:id, :number, :worker, :now, :now, :outcome, :note);

-- channel state and key/value -----------------------------------------------------------------------------------

-- name: resume_channel
INSERT INTO channel_state (channel, paused_until, reason, updated_at) VALUES (:channel, NULL, NULL, :now)
ON CONFLICT (channel) DO UPDATE SET paused_until = NULL, reason = NULL, updated_at = excluded.updated_at;

-- name: channel_states
SELECT * FROM channel_state;

-- name: kv_get
SELECT value FROM kv WHERE key = :key AND (expires_at IS NULL OR expires_at > :now);

-- name: kv_set
INSERT INTO kv (key, value, expires_at, updated_at) VALUES (:key, :value, :expires_at, :now)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,
    updated_at = excluded.updated_at;

-- Takes the key only when it is absent or expired: one row changed means this call set it.
-- name: kv_add
INSERT INTO kv (key, value, expires_at, updated_at) VALUES (:key, :value, :expires_at, :now)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,
    updated_at = excluded.updated_at
WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= :now;

-- Expired keys (used hook signatures, released locks, old tokens), a bounded batch at a time: a long DELETE would
-- hold the write lock other writers wait on.
-- name: purge_expired_kv
DELETE FROM kv WHERE key IN (
    SELECT key FROM kv WHERE expires_at IS NOT NULL AND expires_at <= :now LIMIT :batch
);

-- reading -------------------------------------------------------------------------------------------------------

-- name: get_delivery
SELECT * FROM delivery_rows WHERE id = :id;

-- name: attempts
SELECT * FROM attempts WHERE delivery_id = :delivery_id ORDER BY number;

-- name: queue_depth
SELECT channel, state, count(*) AS n FROM deliveries GROUP BY channel, state;

-- name: count_by_state
SELECT state, count(*) AS n FROM deliveries GROUP BY state;

-- name: count_stories
SELECT count(DISTINCT story_id) FROM stories;

-- name: count_story_versions
SELECT count(*) FROM stories;

-- name: count_attempts
SELECT count(*) FROM attempts;

-- name: oldest_pending_due
SELECT min(due_at) FROM deliveries WHERE state IN {PENDING_STATES};

-- name: recent_story_ids
SELECT story_id FROM stories GROUP BY story_id ORDER BY max(received_at) DESC, story_id LIMIT :limit;

-- reach (评) ------------------------------------------------------------------------------------------------------

-- A post's plan: one sample per age; a plan written twice (an outcome batch retried) stays one.
-- name: insert_reach_sample
INSERT INTO reach_samples (delivery_id, story_id, channel, age_seconds, state, due_at, created_at, updated_at)
VALUES (:delivery_id, :story_id, :channel, :age_seconds, 'queued', :due_at, :now, :now)
ON CONFLICT (delivery_id, age_seconds) DO NOTHING;

-- The story's samples not yet taken on the channel stop (retracted, or a newer post replaced the sampled one).
-- name: cancel_reach_samples
UPDATE reach_samples SET state = 'canceled', due_at = NULL, note = :note, updated_at = :now
WHERE story_id = :story_id AND channel = :channel AND state = 'queued';

-- Fenced like a delivery's outcome: only the attempt that still holds the lease writes.
-- name: finish_reach_sample
UPDATE reach_samples SET state = :state, due_at = :due_at, retry_count = retry_count + :retry_step,
       lease_owner = NULL, lease_expires = NULL, note = :note, last_error = :last_error,
       last_error_class = :error_class, updated_at = :now
WHERE id = :id AND state = 'in_flight' AND lease_owner = :worker AND attempts = :attempt
RETURNING story_id, channel;

-- name: insert_reach_reading
INSERT INTO reach_readings (sample_id, story_id, channel, observed_at, raw)
VALUES (:sample_id, :story_id, :channel, :observed_at, :raw)
RETURNING id;

-- name: insert_reach_point
INSERT INTO reach_points (reading_id, story_id, channel, metric, observed_at, value)
VALUES (:reading_id, :story_id, :channel, :metric, :observed_at, :value);

-- Reading again sends nothing, so an expired sample simply goes back to the queue; it spends a retry step, so
-- a sample that keeps killing its worker ends failed, not looping.
-- name: requeue_expired_reach_samples
UPDATE reach_samples SET state = 'queued', due_at = :now, retry_count = retry_count + 1, lease_owner = NULL,
       lease_expires = NULL, note = 'lease expired; reading again', updated_at = :now
WHERE state = 'in_flight' AND lease_expires < :now;

-- An owned output counts only what it delivered and did not withdraw since.
-- name: live_delivery_of_story
SELECT action FROM deliveries WHERE story_id = :story_id AND channel = :channel AND state = 'delivered'
ORDER BY id DESC LIMIT 1;

-- name: add_reach_count
INSERT INTO reach_counts (story_id, channel, metric, bucket_start, value)
VALUES (:story_id, :channel, :metric, :bucket_start, :amount)
ON CONFLICT (story_id, channel, metric, bucket_start) DO UPDATE SET value = reach_counts.value + excluded.value;

-- name: reach_samples_of_story
SELECT * FROM reach_samples WHERE story_id = :story_id ORDER BY channel, age_seconds, id;

-- name: reach_points_of_story
SELECT story_id, channel, metric, observed_at, value FROM reach_points WHERE story_id = :story_id
ORDER BY channel, metric, observed_at;

-- name: reach_readings_of_story
SELECT story_id, channel, observed_at, raw FROM reach_readings WHERE story_id = :story_id
ORDER BY channel, observed_at;

-- name: reach_counts_of_story
SELECT story_id, channel, metric, bucket_start, value FROM reach_counts WHERE story_id = :story_id
ORDER BY channel, metric, bucket_start;

-- Every point before the period's end of each story × channel that has one inside the period: the latest before
-- each end is picked in Python.
-- name: reach_points_for_period
SELECT p.story_id, p.channel, p.metric, p.observed_at, p.value FROM reach_points p
WHERE p.observed_at < :until AND EXISTS (
    SELECT 1 FROM reach_points q WHERE q.story_id = p.story_id AND q.channel = p.channel
    AND q.observed_at >= :since AND q.observed_at < :until)
ORDER BY p.story_id, p.channel, p.metric, p.observed_at;

-- name: reach_counts_for_period
SELECT story_id, channel, metric, sum(value) AS value FROM reach_counts
WHERE bucket_start >= :since AND bucket_start < :until
GROUP BY story_id, channel, metric;

-- name: reach_latest_by_channel
SELECT p.channel, p.metric, sum(p.value) AS value FROM reach_points p
WHERE p.observed_at = (SELECT max(l.observed_at) FROM reach_points l WHERE l.story_id = p.story_id
                       AND l.channel = p.channel AND l.metric = p.metric)
GROUP BY p.channel, p.metric;

-- name: reach_counts_by_channel
SELECT channel, metric, sum(value) AS value FROM reach_counts GROUP BY channel, metric;
