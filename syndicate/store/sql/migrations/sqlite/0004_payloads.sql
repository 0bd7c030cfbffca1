-- Version 4: a delivery's rendered payload in a table of its own. It is written once, when the story fans out,
-- but as a column of deliveries it was rewritten with every change of state (the claim, the outcome), and it
-- spread the rows a commit changes over about four times the pages (a webhook story's payload is about 0.8 KB, a
-- long article's several KB, the rest of its row about 0.2 KB).
CREATE TABLE payloads (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    body        TEXT    NOT NULL
);
INSERT INTO payloads (delivery_id, body) SELECT id, payload FROM deliveries WHERE payload IS NOT NULL;
ALTER TABLE deliveries DROP COLUMN payload;
-- A delivery as the code reads it: every column in DeliveryRecord's order, its payload joined back in.
CREATE VIEW delivery_rows AS
SELECT d.id, d.story_id, d.version, d.channel, d.action, d.state, p.body AS payload, d.checkpoint, d.receipt,
       d.attempts, d.retry_count, d.due_at, d.reconcile, d.lease_owner, d.lease_expires, d.note, d.last_error,
       d.last_error_class, d.last_platform_code, d.created_at, d.updated_at
FROM deliveries d LEFT JOIN payloads p ON p.delivery_id = d.id;
