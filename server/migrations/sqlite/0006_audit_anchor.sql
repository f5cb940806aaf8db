-- Audit retention: once old events are archived to files and removed from
-- audit_events, this one row says where the chain in the table starts: the
-- sequence number and MAC of the last event archived, and anchor_mac, the
-- audit key's MAC over both, so the anchor cannot be moved forward without
-- the root key. No row: nothing was archived. Additive: a previous release
-- ignores it (but would not verify a log whose start was archived).

CREATE TABLE audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    mac BLOB NOT NULL,
    anchor_mac BLOB NOT NULL
) STRICT;
