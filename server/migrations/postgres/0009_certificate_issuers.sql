-- A revoked serial names its issuer: serials are unique per issuer only,
-- and revoking one CA's certificate must not refuse another CA's of the
-- same serial. '' is any issuer: the rows from before, and a serial
-- revoked without naming its issuer. A previous release writes rows of
-- issuer '' and reads every row as any issuer's: it refuses more, never
-- less.

ALTER TABLE certificates ADD COLUMN IF NOT EXISTS issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates DROP CONSTRAINT IF EXISTS certificates_pkey;
ALTER TABLE certificates ADD PRIMARY KEY (serial, issuer);
