-- 0003: delivering the outbox to a webhook (eir/webhook.py, README "Notifications").
--
-- Each warning keeps its delivery state: how many POSTs were started, when
-- the first one was, when it may be tried again, the last error, and when
-- it was given up on. Times the sender compares (first and next attempt)
-- are REAL Unix seconds of the system clock; failed_at is the registry's
-- usual text, as sent_at is.
ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN first_attempt_at REAL;
-- NULL: as soon as possible. Set to the end of a lease when a POST starts,
-- so a crash in the middle of one makes the row due again after the lease.
ALTER TABLE outbox ADD COLUMN next_attempt_at REAL;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
ALTER TABLE outbox ADD COLUMN failed_at TEXT;

-- What the sender asks every poll: the warnings still to deliver, by when.
CREATE INDEX outbox_undelivered ON outbox (next_attempt_at)
WHERE sent_at IS NULL AND failed_at IS NULL;
