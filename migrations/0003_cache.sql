-- Exact-match response cache (DESIGN.md "Response cache"). One entry per (tenant, key):
-- the key is the SHA-256 of the canonical request after routing, and the tenant is part of
-- the primary key, so an entry is never shared across tenants. An entry is served while
-- it is younger than the TTL that applies now and not past `expires_at` (its TTL when
-- stored); expired entries are deleted by a sweeper.
CREATE TABLE IF NOT EXISTS cache_entries (
    tenant              text        NOT NULL,
    key_hash            bytea       NOT NULL,
    -- who answered, what it answered, and what that call cost (a hit saves this)
    provider            text        NOT NULL,
    model               text        NOT NULL,
    output              jsonb       NOT NULL,
    input_tokens        bigint      NOT NULL DEFAULT 0,
    cached_input_tokens bigint      NOT NULL DEFAULT 0,
    output_tokens       bigint      NOT NULL DEFAULT 0,
    cost_usd            numeric     NOT NULL DEFAULT 0,
    -- the job whose answer this is
    job_id              text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    PRIMARY KEY (tenant, key_hash)
);
CREATE INDEX IF NOT EXISTS cache_entries_expires_idx ON cache_entries (expires_at);

-- A job answered from the cache made no provider call (so it has no cost row, and its
-- cost_usd is the sum of none): what the call would have cost is kept on its row.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS cache_hit boolean NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS cache_saved_usd numeric NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS jobs_cache_hit_idx ON jobs (finished_at) WHERE cache_hit;
