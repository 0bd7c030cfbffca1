-- The SQLite store's own statements, by name: those whose SQL differs from the other dialect's (the
-- shared ones are in queries.sql; syndicate/store/queries.py merges both files once at import).
-- Parameters are :name. A list parameter arrives as one JSON array and is read with json_each: one statement
-- text whatever the list's length (sqlite3 caches it prepared) and no bound-parameter limit to chunk around.
-- {PENDING_STATES} and {OPEN_STATES} are literal state lists filled in at load; {where} is a per-call slot.

-- migrations ----------------------------------------------------------------------------------------------------

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL);

-- name: record_migration
INSERT INTO schema_migrations (version, applied_at) VALUES (:version, strftime('%s','now'));

-- stories and fan-out -------------------------------------------------------------------------------------------

-- The planner reads these; the write lock BEGIN IMMEDIATE took keeps them as read until commit.
-- name: deliveries_of_story
SELECT * FROM delivery_rows WHERE story_id = :story_id ORDER BY id;

-- Only a delivery that has not started (and is not waiting to reconcile an earlier attempt) changes.
-- name: transition_delivery
UPDATE deliveries SET state = :state, note = :note, due_at = NULL, updated_at = :now
WHERE id = :id AND state IN {PENDING_STATES} AND reconcile = 0;

-- claiming ------------------------------------------------------------------------------------------------------

-- Read before any write lock is taken: an idle poll costs one index probe per channel.
-- name: channels_with_due_work
SELECT c.value AS channel FROM json_each(:channels) c
WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.channel = c.value AND d.state IN {PENDING_STATES}
              AND d.due_at <= :now);

-- Per channel asked for: whether a pause is in force, and its requests in flight, leaving out this worker's
-- finished-but-unwritten deliveries (they hold no request). Reach samples in flight take a slot too: a channel's
-- concurrency bounds every request it has open. One statement for both, read under the write lock.
-- name: claim_gate
SELECT c.value AS channel,
       EXISTS (SELECT 1 FROM channel_state s WHERE s.channel = c.value AND s.paused_until > :now) AS paused,
       (SELECT count(*) FROM deliveries d
        WHERE d.state = 'in_flight' AND d.channel = c.value
          AND NOT (d.lease_owner = :worker AND d.id IN (SELECT value FROM json_each(:finished))))
       + (SELECT count(*) FROM reach_samples r WHERE r.state = 'in_flight' AND r.channel = c.value) AS busy
FROM json_each(:channels) c;

-- Set-based: one UPDATE ... RETURNING per channel whatever the batch size, so the write lock other workers wait
-- for is held for less time (a statement per row before). The payload comes back as its UTF-8 bytes: the channel
-- parses it from bytes (pydantic-core), so decoding it into a str here only for it to be encoded again cost two
-- passes over every payload claimed. Every column of deliveries, in table order.
-- name: claim_deliveries
UPDATE deliveries SET state = 'in_flight', lease_owner = :worker, lease_expires = :lease_expires,
       attempts = attempts + 1, updated_at = :now
WHERE id IN (
    SELECT d.id FROM deliveries d
    WHERE d.channel = :channel AND d.state IN {PENDING_STATES} AND d.due_at <= :now
      AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.story_id = d.story_id AND p.channel = d.channel
                      AND p.id < d.id AND p.state IN {OPEN_STATES})
    ORDER BY d.due_at, d.id LIMIT :free)
RETURNING id, story_id, version, channel, action, state,
          (SELECT CAST(p.body AS BLOB) FROM payloads p WHERE p.delivery_id = deliveries.id) AS payload,
          checkpoint, receipt, attempts, retry_count, due_at, reconcile, lease_owner, lease_expires, note,
          last_error, last_error_class, last_platform_code, created_at, updated_at;

-- The claim's attempt rows (SQLite's UPDATE ... RETURNING cannot feed an INSERT in one statement).
-- name: insert_attempts
INSERT INTO attempts (delivery_id, number, worker, started_at)
SELECT id, attempts, :worker, :now FROM deliveries WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING delivery_id, id;

-- leases and outcomes -------------------------------------------------------------------------------------------

-- name: extend_leases
UPDATE deliveries SET lease_expires = :lease_until
WHERE state = 'in_flight' AND lease_owner = :worker AND id IN (SELECT value FROM json_each(:ids))
RETURNING id;

-- Read once for the batch when the fenced write below found a lost lease (or a batch lacks its posts); the write
-- lock is held, so nothing changes between this read and the writes.
-- name: lease_holders
SELECT id, lease_owner, attempts, story_id, channel FROM deliveries
WHERE state = 'in_flight' AND id IN (SELECT value FROM json_each(:ids));

-- Changes only a row that the completion's attempt still leases (owner and attempt number): the rows changed by
-- the batch, against its size, say whether every lease held. It leaves the action as it is: SQLite rewrites the
-- index entries of every column an UPDATE sets, and the action is in the unique (story, version, channel, action)
-- index (1.4 of a claim's 16.6 WAL pages, before). record_converted_outcome is the same for an outcome that sets it.
-- name: record_outcome
UPDATE deliveries SET state = :state, due_at = :due_at, receipt = coalesce(:receipt, receipt),
       retry_count = retry_count + :retry_step, reconcile = :reconcile, lease_owner = NULL, lease_expires = NULL,
       note = :note, last_error = :last_error, last_error_class = :error_class,
       last_platform_code = :platform_code, updated_at = :now
WHERE id = :id AND state = 'in_flight' AND lease_owner = :worker AND (:attempt IS NULL OR attempts = :attempt);

-- name: record_converted_outcome
UPDATE deliveries SET state = :state, due_at = :due_at, receipt = coalesce(:receipt, receipt),
       retry_count = retry_count + :retry_step, reconcile = :reconcile, lease_owner = NULL, lease_expires = NULL,
       note = :note, last_error = :last_error, last_error_class = :error_class,
       last_platform_code = :platform_code, updated_at = :now, action = :action
WHERE id = :id AND state = 'in_flight' AND lease_owner = :worker AND (:attempt IS NULL OR attempts = :attempt);

-- name: finish_attempt
UPDATE attempts SET finished_at = :finished_at, outcome = :outcome, error_class = :error_class, message = :message,
       platform_code = :platform_code, duration_ms = :duration_ms
WHERE id = :id AND finished_at IS NULL;

-- name: expired_leases
SELECT id FROM deliveries WHERE state = 'in_flight' AND lease_expires < :now;

-- name: expire_attempts
UPDATE attempts SET finished_at = :now, outcome = 'lease_expired',
       message = 'the worker stopped answering; the attempt may have reached the platform'
WHERE finished_at IS NULL AND delivery_id IN (SELECT value FROM json_each(:ids));

-- name: requeue_expired
UPDATE deliveries SET state = 'queued', reconcile = 1, due_at = :now, lease_owner = NULL,
       retry_count = retry_count + 1, lease_expires = NULL, updated_at = :now,
       note = 'lease expired; checking whether it landed'
WHERE id IN (SELECT value FROM json_each(:ids));

-- Per channel: its earliest pending due time, and its pause if one is in force.
-- name: next_due
SELECT c.value AS channel,
       (SELECT min(d.due_at) FROM deliveries d WHERE d.channel = c.value AND d.state IN {PENDING_STATES}) AS due,
       (SELECT s.paused_until FROM channel_state s WHERE s.channel = c.value AND s.paused_until > :now) AS paused
FROM json_each(:channels) c;

-- Whether any delivery is claimable: EXISTS stops at the first (a count walked a whole backlog).
-- name: any_claimable
SELECT EXISTS (SELECT 1 FROM deliveries d
WHERE d.channel IN (SELECT value FROM json_each(:channels)) AND d.state IN {PENDING_STATES} AND d.due_at <= :now
  AND d.channel NOT IN (SELECT channel FROM channel_state WHERE paused_until > :now)
  AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.story_id = d.story_id AND p.channel = d.channel
                  AND p.id < d.id AND p.state IN {OPEN_STATES}));

-- name: count_in_flight
SELECT count(*) FROM deliveries WHERE state = 'in_flight' AND channel IN (SELECT value FROM json_each(:channels));

-- operator repair -----------------------------------------------------------------------------------------------

-- An unknown one checks first whether it landed, unless the operator forces a resend.
-- name: requeue
UPDATE deliveries SET state = 'queued', retry_count = 0, due_at = :now,
       reconcile = CASE WHEN state = 'unknown' AND NOT :force THEN 1 ELSE 0 END,
       lease_owner = NULL, lease_expires = NULL, note = 'replayed by an operator', updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND state IN (SELECT value FROM json_each(:states))
RETURNING id;

-- name: mark_landed
UPDATE deliveries SET state = 'delivered', receipt = :receipt, attempts = attempts + 1, due_at = NULL,
       reconcile = 0, lease_owner = NULL, lease_expires = NULL, note = :note, last_error = NULL,
       last_error_class = NULL, last_platform_code = NULL, updated_at = :now
WHERE id = :id AND state = 'unknown'
RETURNING attempts;

-- channel state and key/value -----------------------------------------------------------------------------------

-- An existing longer pause is kept (two workers hitting a limit agree), with its reason.
-- name: pause_channel
INSERT INTO channel_state (channel, paused_until, reason, updated_at) VALUES (:channel, :until, :reason, :now)
ON CONFLICT (channel) DO UPDATE SET
    reason = CASE WHEN coalesce(paused_until, 0) > excluded.paused_until THEN reason ELSE excluded.reason END,
    paused_until = max(coalesce(paused_until, 0), excluded.paused_until),
    updated_at = excluded.updated_at;

-- reading -------------------------------------------------------------------------------------------------------

-- {where} comes from the DeliveryFilter builder; no limit is LIMIT -1 in SQLite.
-- name: list_deliveries
SELECT * FROM delivery_rows WHERE {where} ORDER BY id LIMIT coalesce(:limit, -1);

-- Per story, the newest delivered delivery on the channel; no before_id pages from the top.
-- name: latest_delivered
SELECT * FROM delivery_rows d WHERE d.channel = :channel AND d.state = 'delivered'
  AND d.id = (SELECT max(l.id) FROM deliveries l WHERE l.story_id = d.story_id AND l.channel = d.channel
              AND l.state = 'delivered')
  AND d.id < coalesce(:before_id, 9223372036854775807)
ORDER BY d.id DESC LIMIT :limit;

-- The same for one story: a separate statement so it walks that story's index entries, not the channel's.
-- name: latest_delivered_story
SELECT * FROM delivery_rows d WHERE d.channel = :channel AND d.state = 'delivered' AND d.story_id = :story_id
  AND d.id = (SELECT max(l.id) FROM deliveries l WHERE l.story_id = d.story_id AND l.channel = d.channel
              AND l.state = 'delivered')
  AND d.id < coalesce(:before_id, 9223372036854775807)
ORDER BY d.id DESC LIMIT :limit;

-- Operator rows and skipped ones are not transmissions: left out of the health chart.
-- name: attempt_buckets
SELECT d.channel, CAST((a.finished_at - :since) / :bucket_seconds AS INTEGER) AS slot, count(*) AS n,
       sum(CASE WHEN a.outcome IN (SELECT value FROM json_each(:success)) THEN 1 ELSE 0 END) AS ok,
       avg(a.duration_ms) AS mean_ms, max(a.duration_ms) AS max_ms
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE a.finished_at >= :since AND a.worker != :operator AND coalesce(a.outcome, '') != 'skipped'
GROUP BY d.channel, slot ORDER BY d.channel, slot;

-- reach (评) ------------------------------------------------------------------------------------------------------

-- Read before any write lock is taken, like channels_with_due_work.
-- name: channels_with_due_samples
SELECT c.value AS channel FROM json_each(:channels) c
WHERE EXISTS (SELECT 1 FROM reach_samples s WHERE s.channel = c.value AND s.state = 'queued' AND s.due_at <= :now);

-- name: claim_reach_samples
UPDATE reach_samples SET state = 'in_flight', lease_owner = :worker, lease_expires = :lease_expires,
       attempts = attempts + 1, updated_at = :now
WHERE id IN (
    SELECT s.id FROM reach_samples s WHERE s.channel = :channel AND s.state = 'queued' AND s.due_at <= :now
    ORDER BY s.due_at, s.id LIMIT :free)
RETURNING *;

-- name: extend_reach_leases
UPDATE reach_samples SET lease_expires = :lease_until
WHERE state = 'in_flight' AND lease_owner = :worker AND id IN (SELECT value FROM json_each(:ids))
RETURNING id;

-- name: next_reach_due
SELECT c.value AS channel,
       (SELECT min(s.due_at) FROM reach_samples s WHERE s.channel = c.value AND s.state = 'queued') AS due,
       (SELECT p.paused_until FROM channel_state p WHERE p.channel = c.value AND p.paused_until > :now) AS paused
FROM json_each(:channels) c;

-- name: count_reach_in_flight
SELECT count(*) FROM reach_samples WHERE state = 'in_flight' AND channel IN (SELECT value FROM json_each(:channels));
