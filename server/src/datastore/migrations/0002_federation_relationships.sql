-- Sigil datastore schema, version 2: federation relationships.

-- One row per foreign trust domain. `profile` is 'https_web' or 'https_spiffe'; `endpoint_spiffe_id` is
-- the bundle endpoint's SPIFFE ID for 'https_spiffe' and '' for 'https_web'. The foreign bundle itself
-- lives in `bundles` and outlives the relationship (as SPIRE), so there is no foreign key between them.
CREATE TABLE federation_relationships (
    trust_domain        TEXT    NOT NULL PRIMARY KEY,
    bundle_endpoint_url TEXT    NOT NULL,
    profile             TEXT    NOT NULL CHECK (profile IN ('https_web', 'https_spiffe')),
    endpoint_spiffe_id  TEXT    NOT NULL,
    -- Who manages the row ('' = made by hand); see FederationRelationship.managed_by in admin.proto.
    managed_by          TEXT    NOT NULL DEFAULT '',
    CHECK ((profile = 'https_web') = (endpoint_spiffe_id = ''))
) WITHOUT ROWID;
