-- Semantic response cache (DESIGN.md "Semantic cache"). An entry of the exact cache that
-- a semantic scope stored also carries its prompt's embedding, so one row serves both
-- lookups, expires once and is forgotten once:
--   shape_hash  SHA-256 of the request without the prompt's text (must be equal);
--   embedding   the prompt's vector, one signed byte per dimension;
--   bands       the vector's locality-sensitive-hash bands, each mixed with the tenant and
--               the shape: a lookup reads the entries sharing a band (GIN, `&&`) and
--               computes their exact cosine. (No pgvector: see README "Semantic cache".)
ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS shape_hash bytea;
ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS embedding bytea;
ALTER TABLE cache_entries ADD COLUMN IF NOT EXISTS bands bigint[];
CREATE INDEX IF NOT EXISTS cache_entries_bands_idx ON cache_entries USING gin (bands)
    WHERE bands IS NOT NULL;
-- `switchyard cache forget`: the entries stored from a job.
CREATE INDEX IF NOT EXISTS cache_entries_job_idx ON cache_entries (tenant, job_id);

-- A job answered from the cache: the job whose stored answer it got.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS cache_source text;
