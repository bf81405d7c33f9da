-- Sigil datastore schema, version 1. Applied in one transaction; PRAGMA user_version records it.

-- Registration entries. `selectors` keeps the entry's selectors in their given order (JSON array of
-- "type:value" strings); `entry_selectors` holds the same selectors one per row for filtering.
-- `selector_key` is a digest of the sorted, deduplicated selector set: the unique index on
-- (spiffe_id, parent_id, selector_key) refuses duplicate entries atomically, as SPIRE does.
CREATE TABLE entries (
    id            TEXT    NOT NULL PRIMARY KEY,
    spiffe_id     TEXT    NOT NULL,
    parent_id     TEXT    NOT NULL,
    selector_key  TEXT    NOT NULL,
    selectors     TEXT    NOT NULL,
    x509_svid_ttl INTEGER NOT NULL,
    jwt_svid_ttl  INTEGER NOT NULL,
    dns_names     TEXT    NOT NULL,
    federates_with TEXT   NOT NULL,
    admin         INTEGER NOT NULL,
    downstream    INTEGER NOT NULL,
    hint          TEXT    NOT NULL,
    entry_expiry  INTEGER NOT NULL,
    revision      INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX entries_identity ON entries (spiffe_id, parent_id, selector_key);
CREATE INDEX entries_parent_id ON entries (parent_id);
CREATE INDEX entries_hint ON entries (hint);

CREATE TABLE entry_selectors (
    entry_id TEXT    NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    pos      INTEGER NOT NULL,
    selector TEXT    NOT NULL,
    PRIMARY KEY (entry_id, pos)
) WITHOUT ROWID;
CREATE INDEX entry_selectors_selector ON entry_selectors (selector, entry_id);

-- Attested agents; `selectors` is a JSON array of "type:value" strings.
CREATE TABLE agents (
    spiffe_id        TEXT    NOT NULL PRIMARY KEY,
    attestation_type TEXT    NOT NULL,
    cert_serial      TEXT    NOT NULL,
    cert_expires_at  INTEGER NOT NULL,
    selectors        TEXT    NOT NULL,
    banned           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE join_tokens (
    token      TEXT    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);

-- Trust bundles. u64 values (sequence, refresh hint) are stored as their i64 bit pattern.
CREATE TABLE bundles (
    trust_domain      TEXT    NOT NULL PRIMARY KEY,
    sequence          INTEGER NOT NULL,
    refresh_hint_secs INTEGER
) WITHOUT ROWID;

CREATE TABLE bundle_x509_authorities (
    trust_domain TEXT    NOT NULL REFERENCES bundles (trust_domain) ON DELETE CASCADE,
    pos          INTEGER NOT NULL,
    cert_der     BLOB    NOT NULL,
    PRIMARY KEY (trust_domain, pos)
) WITHOUT ROWID;

CREATE TABLE bundle_jwt_authorities (
    trust_domain        TEXT    NOT NULL REFERENCES bundles (trust_domain) ON DELETE CASCADE,
    pos                 INTEGER NOT NULL,
    key_id              TEXT    NOT NULL,
    public_key_spki_der BLOB    NOT NULL,
    expires_at          INTEGER NOT NULL,
    PRIMARY KEY (trust_domain, pos)
) WITHOUT ROWID;

-- The CA module's journal: opaque bytes, one row.
CREATE TABLE ca_journal (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    data BLOB    NOT NULL
);
