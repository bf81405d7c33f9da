-- Sigil datastore schema, version 4: SPIRE's store_svid flag on registration entries (`entry create
-- -storeSVID`). Stored and returned only: Sigil has no SVIDStore plugins.
ALTER TABLE entries ADD COLUMN store_svid INTEGER NOT NULL DEFAULT 0;
