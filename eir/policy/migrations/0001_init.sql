-- 0001: list entries, exception pairs and the change log.
--
-- Every write appends one change_log row in the same transaction and stamps
-- the rows it touched with that seq, so a running server polls MAX(seq)
-- cheaply and a later incremental reload can ask for "seq > version"
-- (DESIGN.md section 7). Timestamps are UTC text 'YYYY-MM-DDTHH:MM:SSZ',
-- which sorts in time order. There is deliberately no index on seq yet: it
-- would cost every imported row a second B-tree write, and only the future
-- incremental reload needs it (it can add the index in its own migration).
-- For the same reason seq is not a FOREIGN KEY (measured: about a third of
-- the import time), and the IMEI check is one anchored GLOB rather than
-- length() plus a '*[^0-9]*' scan. The importer validates rows anyway;
-- the CHECKs are the last line against other writers.

CREATE TABLE change_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: never reuse a seq
    at      TEXT    NOT NULL,
    kind    TEXT    NOT NULL,                   -- 'import', ...
    count   INTEGER NOT NULL DEFAULT 0,         -- rows written by this change
    summary TEXT                                -- JSON, e.g. rows per list
);

-- WITHOUT ROWID clusters the table on imei, so the snapshot load is one
-- sequential scan in key order and there is no second index to maintain.
CREATE TABLE list_entry (
    imei   TEXT    NOT NULL PRIMARY KEY
                   CHECK (imei GLOB '[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]'),
    list   TEXT    NOT NULL CHECK (list IN ('white', 'grey', 'black')),
    reason TEXT    NOT NULL,
    source TEXT,
    since  TEXT    NOT NULL,
    note   TEXT,
    seq    INTEGER NOT NULL  -- change_log.seq of the last write
) WITHOUT ROWID;

-- POLICY.md rule 2: (IMEI, IMSI) pairs allowed despite a black-list entry.
-- An exception may exist before (or without) any list entry for its IMEI.
CREATE TABLE exception_pair (
    imei   TEXT    NOT NULL
                   CHECK (imei GLOB '[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]'),
    imsi   TEXT    NOT NULL
                   CHECK (length(imsi) BETWEEN 5 AND 15 AND imsi NOT GLOB '*[^0-9]*'),
    reason TEXT    NOT NULL,
    source TEXT,
    since  TEXT    NOT NULL,
    note   TEXT,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (imei, imsi)
) WITHOUT ROWID;
