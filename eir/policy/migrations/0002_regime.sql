-- 0002: the national regime (POLICY.md "What the registry must keep").
--
-- Times written by this migration's tables are INTEGER UTC epoch seconds
-- where the hot path or a scan compares them (observations, clocks, the
-- outbox), and the registry's usual text 'YYYY-MM-DDTHH:MM:SSZ' where a
-- person reads them (entries, the audit trail).

-- List entries gain an explicit grace end, an evidence reference, and the
-- entry a lifecycle action replaced (JSON), which `recovered` restores.
ALTER TABLE list_entry ADD COLUMN grace_until TEXT;
ALTER TABLE list_entry ADD COLUMN evidence TEXT;
ALTER TABLE list_entry ADD COLUMN prev TEXT;
ALTER TABLE exception_pair ADD COLUMN evidence TEXT;

-- Entries covering a TAC or an IMEI range, or restricted to one software
-- version (sv '' = any). An exact IMEI with an SV is a range lo = hi.
-- The most specific entry wins (eir/policy/ranges.py).
CREATE TABLE range_entry (
    lo          TEXT    NOT NULL CHECK (length(lo) = 14 AND lo NOT GLOB '*[^0-9]*'),
    hi          TEXT    NOT NULL CHECK (length(hi) = 14 AND hi NOT GLOB '*[^0-9]*' AND hi >= lo),
    sv          TEXT    NOT NULL DEFAULT '' CHECK (sv = '' OR (length(sv) = 2 AND sv NOT GLOB '*[^0-9]*')),
    list        TEXT    NOT NULL CHECK (list IN ('white', 'grey', 'black')),
    reason      TEXT    NOT NULL,
    source      TEXT,
    since       TEXT    NOT NULL,
    grace_until TEXT,
    evidence    TEXT,
    note        TEXT,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (lo, hi, sv)
) WITHOUT ROWID;

-- The TAC database (GSMA TAC allocations): TAC -> brand, model, device class.
CREATE TABLE tac (
    tac   INTEGER NOT NULL PRIMARY KEY CHECK (tac BETWEEN 0 AND 99999999),
    brand TEXT,
    model TEXT,
    class TEXT    NOT NULL,
    seq   INTEGER NOT NULL
);

-- Operators (the Origin-Realm of the MME that asked), numbered so that a
-- hundred million observations do not repeat the name.
CREATE TABLE operator (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);

-- Observations: (IMEI, IMSI, operator) with first and last seen. imei is the
-- 14-digit IMEI as an integer, imsi '' when the MME sent none. Written in
-- batches behind the hot path with first_seen = MIN and last_seen = MAX, so
-- a replayed batch changes nothing and the earliest sighting wins.
-- Clustered on (imei, ...) so one IMEI's history is one short range read.
CREATE TABLE observation (
    imei       INTEGER NOT NULL,
    imsi       TEXT    NOT NULL,
    operator   INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (imei, imsi, operator)
) WITHOUT ROWID;

-- Decisions counted per UTC day, operator, status and reason.
CREATE TABLE decision_count (
    day      TEXT    NOT NULL,
    operator TEXT    NOT NULL,
    status   TEXT    NOT NULL,   -- WHITELISTED, GREYLISTED, BLACKLISTED, UNKNOWN
    reason   TEXT    NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (day, operator, status, reason)
) WITHOUT ROWID;

-- The audit trail is the change log itself: one row per operation, hash-
-- chained. hash = SHA-256 over prev_hash and the row's canonical JSON
-- (eir/policy/audit.py); a row cannot be changed without breaking every
-- hash after it.
ALTER TABLE change_log ADD COLUMN actor TEXT;
ALTER TABLE change_log ADD COLUMN target TEXT;     -- the IMEI of a lifecycle action, else NULL
ALTER TABLE change_log ADD COLUMN evidence TEXT;
ALTER TABLE change_log ADD COLUMN prev_hash TEXT;
ALTER TABLE change_log ADD COLUMN hash TEXT;
CREATE INDEX change_log_target ON change_log (target) WHERE target IS NOT NULL;

-- Append-only: a sealed row is never updated, and no row is ever deleted.
-- (Anyone with the file can drop the triggers; `eir audit verify` catches that.)
CREATE TRIGGER change_log_no_update BEFORE UPDATE ON change_log
WHEN OLD.hash IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
CREATE TRIGGER change_log_no_delete BEFORE DELETE ON change_log
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;

-- The list version each publisher's list is at, as reported by the EIR.
CREATE TABLE list_version (
    source     TEXT    NOT NULL PRIMARY KEY,
    version    INTEGER NOT NULL,
    kind       TEXT    NOT NULL,   -- full or delta
    applied_at TEXT    NOT NULL,
    sha256     TEXT,               -- of the package or file applied
    publisher  TEXT,
    seq        INTEGER NOT NULL
);

-- Grace clocks (imei, imsi) that have started, for the notifications:
-- next_due is when the next warning is due (NULL once all are produced
-- or the device left grey).
CREATE TABLE grace_clock (
    imei      INTEGER NOT NULL,
    imsi      TEXT    NOT NULL,
    reason    TEXT    NOT NULL,
    started   INTEGER NOT NULL,
    deadline  INTEGER NOT NULL,
    next_step INTEGER NOT NULL DEFAULT 0,
    next_due  INTEGER,
    closed    TEXT,
    PRIMARY KEY (imei, imsi)
) WITHOUT ROWID;
CREATE INDEX grace_clock_due ON grace_clock (next_due) WHERE next_due IS NOT NULL;

-- Warnings to owners of grey devices, each produced once.
CREATE TABLE outbox (
    id       INTEGER PRIMARY KEY,
    imei     TEXT    NOT NULL,
    imsi     TEXT    NOT NULL,
    kind     TEXT    NOT NULL,   -- day0, day20, day27, expiry (from the configured offsets)
    due_at   TEXT    NOT NULL,
    deadline TEXT    NOT NULL,
    created  TEXT    NOT NULL,
    message  TEXT    NOT NULL,
    sent_at  TEXT,
    UNIQUE (imei, imsi, kind)
);
