-- Sigil datastore schema, version 3: an agent's renewed SVID, recorded until the agent first presents it.
--
-- RenewAgentSvid stores the new certificate's serial and expiry here and leaves `cert_serial` alone, so
-- the agent keeps working with the SVID it holds until it switches. The first call that presents the new
-- serial makes it the current one (and the old SVID stops working), as SPIRE does with
-- new_cert_serial_number. '' and 0 mean no renewal pending.
ALTER TABLE agents ADD COLUMN new_cert_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN new_cert_expires_at INTEGER NOT NULL DEFAULT 0;
