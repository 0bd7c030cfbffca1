-- The PostgreSQL store's own statements, by name: those whose SQL differs from the other dialect's (the
-- shared ones are in queries.sql; syndicate/store/queries.py merges both files once at import).
-- Parameters are :name (sent to asyncpg as $1, $2 ...). A list parameter is one array: = ANY(:ids::bigint[]).
-- {PENDING_STATES} and {OPEN_STATES} are literal state lists filled in at load; {where} is a per-call slot.
-- Rows another process may be writing are locked in id order everywhere (FOR UPDATE ... ORDER BY id), so two
-- transactions overlapping on several rows cannot deadlock.

-- transactions, locks and wake-ups (this dialect's own) ----------------------------------------------------------

-- A write transaction starts with its lock in the same round trip: a simple query may hold several statements,
-- but takes no parameters, so {key} is filled in as a string literal (postgres.py quotes it). Transaction-level:
-- released at commit or rollback. Keys as before the SQL moved here ('story:' || id, 'claim:' || channel), so
-- processes of the old and the new code exclude each other during a rolling upgrade.
-- name: begin_locked
BEGIN; SELECT pg_advisory_xact_lock(hashtextextended({key}, 0));

-- The migration lock keeps the number it has always had ("SYND").
-- name: begin_migrations
BEGIN; SELECT pg_advisory_xact_lock(1398361668::bigint);

-- name: begin
BEGIN;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;

-- A wake-up asked for inside a transaction goes in its COMMIT's round trip ({channel} a literal, as above): it is
-- delivered at commit either way, to every process listening on this schema's channel.
-- name: notify_and_commit
SELECT pg_notify({channel}, ''); COMMIT;

-- Outside a transaction.
-- name: notify
SELECT pg_notify(:channel, '');

-- migrations ----------------------------------------------------------------------------------------------------

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ);

-- name: record_migration
INSERT INTO schema_migrations (version, applied_at) VALUES (:version, now());

-- stories and fan-out -------------------------------------------------------------------------------------------

-- Locked: a claim or an outcome write cannot change what the planner decides on until this commits. The payload
-- joined in as delivery_rows joins it (a view over an outer join cannot be locked).
-- name: deliveries_of_story
SELECT d.id, d.story_id, d.version, d.channel, d.action, d.state, b.body AS payload, d.checkpoint, d.receipt,
       d.attempts, d.retry_count, d.due_at, d.reconcile, d.lease_owner, d.lease_expires, d.note, d.last_error,
       d.last_error_class, d.last_platform_code, d.created_at, d.updated_at
FROM deliveries d LEFT JOIN payloads b ON b.delivery_id = d.id
WHERE d.story_id = :story_id ORDER BY d.id FOR UPDATE OF d;

-- Only a delivery that has not started (and is not waiting to reconcile an earlier attempt) changes.
-- name: transition_delivery
UPDATE deliveries SET state = :state, note = :note, due_at = NULL, updated_at = :now
WHERE id = :id AND state IN {PENDING_STATES} AND NOT reconcile;

-- claiming ------------------------------------------------------------------------------------------------------

-- Read before any lock or transaction: an idle poll costs one index probe per channel.
-- name: channels_with_due_work
SELECT c.channel FROM unnest(:channels::text[]) AS c(channel)
WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.channel = c.channel AND d.state IN {PENDING_STATES}
              AND d.due_at <= :now);

-- Per channel asked for: whether a pause is in force, and its requests in flight, leaving out this worker's
-- finished-but-unwritten deliveries (they hold no request). Read under the channel's claim lock, so the count and
-- the claim below are one atomic step across processes. Reach samples in flight take a slot too: a channel's
-- concurrency bounds every request it has open. One statement for both: one round trip.
-- name: claim_gate
SELECT c.channel,
       EXISTS (SELECT 1 FROM channel_state s WHERE s.channel = c.channel AND s.paused_until > :now) AS paused,
       (SELECT count(*) FROM deliveries d
        WHERE d.state = 'in_flight' AND d.channel = c.channel
          AND NOT (d.lease_owner = :worker AND d.id = ANY(:finished::bigint[])))
       + (SELECT count(*) FROM reach_samples r WHERE r.state = 'in_flight' AND r.channel = c.channel) AS busy
FROM unnest(:channels::text[]) AS c(channel);

-- SKIP LOCKED: rows a fan-out or another claimer holds are passed over, not waited for. The attempt rows are
-- written by the same statement (a data-modifying WITH), so a claim is one round trip; each row is every column of
-- deliveries, in table order, then its attempt's id. The payload as its UTF-8 bytes, as in SQLite's claim (the
-- channel parses bytes).
-- name: claim_deliveries
WITH picked AS (
    SELECT d.id FROM deliveries d
    WHERE d.channel = :channel AND d.state IN {PENDING_STATES} AND d.due_at <= :now
      AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.story_id = d.story_id AND p.channel = d.channel
                      AND p.id < d.id AND p.state IN {OPEN_STATES})
    ORDER BY d.due_at, d.id LIMIT :free FOR UPDATE SKIP LOCKED),
claimed AS (
    UPDATE deliveries d SET state = 'in_flight', lease_owner = :worker, lease_expires = :lease_expires,
           attempts = d.attempts + 1, updated_at = :now
    FROM picked WHERE d.id = picked.id
    RETURNING d.id, d.story_id, d.version, d.channel, d.action, d.state,
              (SELECT convert_to(b.body, 'UTF8') FROM payloads b WHERE b.delivery_id = d.id) AS payload,
              d.checkpoint, d.receipt, d.attempts, d.retry_count, d.due_at, d.reconcile, d.lease_owner,
              d.lease_expires, d.note, d.last_error, d.last_error_class, d.last_platform_code, d.created_at,
              d.updated_at),
attempt AS (
    INSERT INTO attempts (delivery_id, number, worker, started_at)
    SELECT id, attempts, :worker, :now FROM claimed
    RETURNING delivery_id, id)
SELECT claimed.*, attempt.id AS attempt_id FROM claimed JOIN attempt ON attempt.delivery_id = claimed.id;

-- leases and outcomes -------------------------------------------------------------------------------------------

-- Locked in id order, as lease_holders locks them: a heartbeat and an outcome write of this worker overlapping on
-- two rows cannot deadlock.
-- name: extend_leases
WITH held AS (SELECT id FROM deliveries WHERE state = 'in_flight' AND lease_owner = :worker
              AND id = ANY(:ids::bigint[]) ORDER BY id FOR UPDATE)
UPDATE deliveries d SET lease_expires = :lease_until FROM held WHERE d.id = held.id
RETURNING d.id;

-- Read once for the batch and locked until commit; then one statement per completion for both tables.
-- name: lease_holders
SELECT id, lease_owner, attempts, story_id, channel FROM deliveries
WHERE state = 'in_flight' AND id = ANY(:ids::bigint[]) ORDER BY id FOR UPDATE;

-- Both writes of one completion in one statement (a data-modifying WITH), so the batch is one round trip: the
-- delivery's outcome where it still holds its lease (:applied, decided on lease_holders' rows), and its attempt
-- closed either way.
-- name: record_outcome_and_finish_attempt
WITH outcome AS (
    UPDATE deliveries SET state = :state, due_at = :due_at, receipt = coalesce(:receipt, receipt),
           retry_count = retry_count + :retry_step, reconcile = :reconcile, lease_owner = NULL, lease_expires = NULL,
           note = :note, last_error = :last_error, last_error_class = :error_class,
           last_platform_code = :platform_code, updated_at = :now, action = coalesce(:action, action)
    WHERE :applied AND id = :id AND state = 'in_flight' AND lease_owner = :worker)
UPDATE attempts SET finished_at = :finished_at, outcome = :outcome, error_class = :error_class, message = :message,
       platform_code = :platform_code, duration_ms = :duration_ms
WHERE id = :attempt_id AND finished_at IS NULL;

-- SKIP LOCKED: two workers reclaiming at once each take different rows, and neither waits on a live outcome write.
-- name: expired_leases
SELECT id FROM deliveries WHERE state = 'in_flight' AND lease_expires < :now FOR UPDATE SKIP LOCKED;

-- name: expire_attempts
UPDATE attempts SET finished_at = :now, outcome = 'lease_expired',
       message = 'the worker stopped answering; the attempt may have reached the platform'
WHERE finished_at IS NULL AND delivery_id = ANY(:ids::bigint[]);

-- name: requeue_expired
UPDATE deliveries SET state = 'queued', reconcile = TRUE, due_at = :now, lease_owner = NULL,
       retry_count = retry_count + 1, lease_expires = NULL, updated_at = :now,
       note = 'lease expired; checking whether it landed'
WHERE id = ANY(:ids::bigint[]);

-- Per channel: its earliest pending due time, and its pause if one is in force.
-- name: next_due
SELECT c.channel,
       (SELECT min(d.due_at) FROM deliveries d WHERE d.channel = c.channel AND d.state IN {PENDING_STATES}) AS due,
       (SELECT s.paused_until FROM channel_state s WHERE s.channel = c.channel AND s.paused_until > :now) AS paused
FROM unnest(:channels::text[]) AS c(channel);

-- Whether any delivery is claimable: EXISTS stops at the first (a count walked a whole backlog).
-- name: any_claimable
SELECT EXISTS (SELECT 1 FROM deliveries d
WHERE d.channel = ANY(:channels::text[]) AND d.state IN {PENDING_STATES} AND d.due_at <= :now
  AND d.channel NOT IN (SELECT channel FROM channel_state WHERE paused_until > :now)
  AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.story_id = d.story_id AND p.channel = d.channel
                  AND p.id < d.id AND p.state IN {OPEN_STATES}));

-- name: count_in_flight
SELECT count(*) FROM deliveries WHERE state = 'in_flight' AND channel = ANY(:channels::text[]);

-- operator repair -----------------------------------------------------------------------------------------------

-- An unknown one checks first whether it landed, unless the operator forces a resend.
-- name: requeue
UPDATE deliveries SET state = 'queued', retry_count = 0, due_at = :now,
       reconcile = (state = 'unknown' AND NOT :force::boolean),
       lease_owner = NULL, lease_expires = NULL, note = 'replayed by an operator', updated_at = :now
WHERE id = ANY(:ids::bigint[]) AND state = ANY(:states::text[])
RETURNING id;

-- name: mark_landed
UPDATE deliveries SET state = 'delivered', receipt = :receipt, attempts = attempts + 1, due_at = NULL,
       reconcile = false, lease_owner = NULL, lease_expires = NULL, note = :note, last_error = NULL,
       last_error_class = NULL, last_platform_code = NULL, updated_at = :now
WHERE id = :id AND state = 'unknown'
RETURNING attempts;

-- channel state and key/value -----------------------------------------------------------------------------------

-- An existing longer pause is kept (two workers hitting a limit agree), with its reason.
-- name: pause_channel
INSERT INTO channel_state (channel, paused_until, reason, updated_at) VALUES (:channel, :until, :reason, :now)
ON CONFLICT (channel) DO UPDATE SET
    reason = CASE WHEN coalesce(channel_state.paused_until, 0) > excluded.paused_until
                  THEN channel_state.reason ELSE excluded.reason END,
    paused_until = greatest(coalesce(channel_state.paused_until, 0), excluded.paused_until),
    updated_at = excluded.updated_at;

-- reading -------------------------------------------------------------------------------------------------------

-- {where} comes from the DeliveryFilter builder; LIMIT NULL is no limit.
-- name: list_deliveries
SELECT * FROM delivery_rows WHERE {where} ORDER BY id LIMIT :limit;

-- Per story, the newest delivered delivery on the channel; no before_id pages from the top.
-- name: latest_delivered
SELECT * FROM delivery_rows d WHERE d.channel = :channel AND d.state = 'delivered'
  AND d.id = (SELECT max(l.id) FROM deliveries l WHERE l.story_id = d.story_id AND l.channel = d.channel
              AND l.state = 'delivered')
  AND d.id < coalesce(:before_id::bigint, 9223372036854775807)
ORDER BY d.id DESC LIMIT :limit;

-- The same for one story: a separate statement so it walks that story's index entries, not the channel's.
-- name: latest_delivered_story
SELECT * FROM delivery_rows d WHERE d.channel = :channel AND d.state = 'delivered' AND d.story_id = :story_id
  AND d.id = (SELECT max(l.id) FROM deliveries l WHERE l.story_id = d.story_id AND l.channel = d.channel
              AND l.state = 'delivered')
  AND d.id < coalesce(:before_id::bigint, 9223372036854775807)
ORDER BY d.id DESC LIMIT :limit;

-- Operator rows and skipped ones are not transmissions: left out of the health chart.
-- name: attempt_buckets
SELECT d.channel, floor((a.finished_at - :since) / :bucket_seconds)::bigint AS slot, count(*) AS n,
       count(*) FILTER (WHERE a.outcome = ANY(:success::text[])) AS ok,
       avg(a.duration_ms) AS mean_ms, max(a.duration_ms) AS max_ms
FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
WHERE a.finished_at >= :since AND a.worker <> :operator AND coalesce(a.outcome, '') <> 'skipped'
GROUP BY d.channel, slot ORDER BY d.channel, slot;

-- reach (评) ------------------------------------------------------------------------------------------------------

-- Read before any lock or transaction, like channels_with_due_work.
-- name: channels_with_due_samples
SELECT c.channel FROM unnest(:channels::text[]) AS c(channel)
WHERE EXISTS (SELECT 1 FROM reach_samples s WHERE s.channel = c.channel AND s.state = 'queued'
              AND s.due_at <= :now);

-- name: claim_reach_samples
WITH picked AS (
    SELECT s.id FROM reach_samples s WHERE s.channel = :channel AND s.state = 'queued' AND s.due_at <= :now
    ORDER BY s.due_at, s.id LIMIT :free FOR UPDATE SKIP LOCKED)
UPDATE reach_samples s SET state = 'in_flight', lease_owner = :worker, lease_expires = :lease_expires,
       attempts = s.attempts + 1, updated_at = :now
FROM picked WHERE s.id = picked.id
RETURNING s.*;

-- name: extend_reach_leases
UPDATE reach_samples SET lease_expires = :lease_until
WHERE state = 'in_flight' AND lease_owner = :worker AND id = ANY(:ids::bigint[])
RETURNING id;

-- name: next_reach_due
SELECT c.channel,
       (SELECT min(s.due_at) FROM reach_samples s WHERE s.channel = c.channel AND s.state = 'queued') AS due,
       (SELECT p.paused_until FROM channel_state p WHERE p.channel = c.channel AND p.paused_until > :now) AS paused
FROM unnest(:channels::text[]) AS c(channel);

-- name: count_reach_in_flight
SELECT count(*) FROM reach_samples WHERE state = 'in_flight' AND channel = ANY(:channels::text[]);
