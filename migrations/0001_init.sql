-- switchyard schema. Table names and the columns named in DESIGN.md Part 1 are contract.

CREATE TABLE IF NOT EXISTS jobs (
    tenant          text        NOT NULL,
    id              text        NOT NULL,
    feature         text,
    user_id         text,
    priority        text,
    task            text,
    requested_model text,
    status          text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    provider        text,
    model           text,
    input_tokens    bigint      NOT NULL DEFAULT 0,
    cached_input_tokens bigint  NOT NULL DEFAULT 0,
    output_tokens   bigint      NOT NULL DEFAULT 0,
    cost_usd        numeric     NOT NULL DEFAULT 0,
    error_kind      text,
    error_message   text,
    output          jsonb,
    -- the whole published result, so a redelivery or resubmission can publish it again
    result          jsonb,
    deliveries      integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (tenant, id)
);

CREATE INDEX IF NOT EXISTS jobs_failed_idx ON jobs (finished_at) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs (created_at);

CREATE TABLE IF NOT EXISTS cost_rows (
    tenant              text        NOT NULL,
    job_id              text        NOT NULL,
    attempt             integer     NOT NULL,
    feature             text,
    user_id             text,
    provider            text        NOT NULL,
    model               text        NOT NULL,
    outcome             text        NOT NULL,
    status_code         integer,
    input_tokens        bigint      NOT NULL DEFAULT 0,
    cached_input_tokens bigint      NOT NULL DEFAULT 0,
    output_tokens       bigint      NOT NULL DEFAULT 0,
    reasoning_tokens    bigint      NOT NULL DEFAULT 0,
    cost_usd            numeric     NOT NULL DEFAULT 0,
    latency_ms          bigint      NOT NULL DEFAULT 0,
    message             text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, job_id, attempt)
);

CREATE INDEX IF NOT EXISTS cost_rows_created_idx ON cost_rows (created_at);

CREATE TABLE IF NOT EXISTS budgets (
    tenant       text        NOT NULL,
    feature      text,
    period       text        NOT NULL CHECK (period IN ('day', 'month')),
    limit_usd    numeric     NOT NULL CHECK (limit_usd >= 0),
    spent_usd    numeric     NOT NULL DEFAULT 0,
    reserved_usd numeric     NOT NULL DEFAULT 0,
    policy       text        NOT NULL DEFAULT 'fail' CHECK (policy IN ('fail', 'defer')),
    period_start timestamptz NOT NULL DEFAULT date_trunc('day', now(), 'UTC'),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- one budget per (tenant, feature-or-whole-tenant, period)
CREATE UNIQUE INDEX IF NOT EXISTS budgets_key ON budgets (tenant, coalesce(feature, ''), period);
