-- Leases: at most one worker runs a (tenant, id) at any moment. A claim takes the lease
-- (a random token and an expiry renewed while the job runs); another delivery of the same
-- key waits while the lease is live and takes over when it expires (its owner died).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS lease_token text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS lease_until timestamptz;
-- The stream sequence of the message whose terminal result is stored: a redelivery of that
-- same message republishes it (and its dead letter) without a new call.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS stream_seq bigint;
-- Hand-backs that are not failures (a budget defer, a worker's own outage): they do not
-- count against worker.max_deliveries. Reset when the job ends.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS free_deliveries integer NOT NULL DEFAULT 0;

-- Budget held for one running job, owned by its lease. Released by the commit that ends
-- the delivery, by the worker when a job task ends any other way, and by a sweeper when
-- the lease it belongs to is gone (its worker died).
CREATE TABLE IF NOT EXISTS budget_reservations (
    lease_token text        PRIMARY KEY,
    tenant      text        NOT NULL,
    job_id      text        NOT NULL,
    feature     text,
    amount_usd  numeric     NOT NULL CHECK (amount_usd >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS budget_reservations_job_idx ON budget_reservations (tenant, job_id);
