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

-- A lookup's candidates: the live entries of a tenant and shape sharing a band with the
-- prompt. A function so that it can carry `enable_seqscan = off`: Postgres cannot
-- estimate `bands && $1` (its band keys are all rare, so it falls back to a default
-- selectivity of ~11 % for 24 keys) and would scan the whole table, which at a million
-- entries takes hundreds of milliseconds, where the GIN index answers in a few. And
-- `jit = off`: that same estimate (~113,000 rows at a million entries) makes a JIT compile
-- worth it to the planner, ~9 ms for a lookup that reads a few hundred rows.
CREATE OR REPLACE FUNCTION semantic_candidates(p_bands bigint[], p_tenant text,
                                               p_shape bytea, p_ttl_s bigint)
RETURNS TABLE (key_hash bytea, embedding bytea)
LANGUAGE sql STABLE
SET enable_seqscan = off
SET jit = off
AS $$
    SELECT e.key_hash, e.embedding FROM cache_entries e
     WHERE e.bands && p_bands AND e.bands IS NOT NULL AND e.tenant = p_tenant
       AND e.shape_hash = p_shape AND e.expires_at > now()
       AND e.created_at > now() - make_interval(secs => p_ttl_s::double precision)
$$;
