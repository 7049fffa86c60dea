-- Shadow evaluation (DESIGN.md "Shadow evaluation"): a sample of a route's succeeded
-- jobs also runs on a candidate model, never returned to the producer.

-- A shadow call's cost row (the candidate's, or a judge's): charged like any call, told
-- apart by this mark. A job's `jobs.cost_usd` is the sum of its rows that are not shadow.
ALTER TABLE cost_rows ADD COLUMN IF NOT EXISTS shadow boolean NOT NULL DEFAULT false;

-- One evaluation per job and candidate: a redelivery or a second worker finds the row
-- and makes no second shadow call. `state` is `running` from its claim (with the call's
-- `started` cost row, in one transaction) until `compared` (agree set) or `failed`
-- (the candidate or the judge failed, or the worker stopped; `message` says why).
CREATE TABLE IF NOT EXISTS shadow_evals (
    tenant              text        NOT NULL,
    job_id              text        NOT NULL,
    route               text        NOT NULL,
    feature             text,
    primary_provider    text        NOT NULL,
    primary_model       text        NOT NULL,
    candidate_provider  text        NOT NULL,
    candidate_model     text        NOT NULL,
    comparison          text        NOT NULL
                        CHECK (comparison IN ('exact', 'json', 'embedding', 'judge')),
    state               text        NOT NULL DEFAULT 'running'
                        CHECK (state IN ('running', 'compared', 'failed')),
    agree               boolean,
    similarity          numeric,
    primary_cost_usd    numeric     NOT NULL DEFAULT 0,
    candidate_cost_usd  numeric     NOT NULL DEFAULT 0,
    judge_cost_usd      numeric     NOT NULL DEFAULT 0,
    candidate_output    jsonb,
    message             text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    PRIMARY KEY (tenant, job_id, candidate_model)
);

CREATE INDEX IF NOT EXISTS shadow_evals_created_idx ON shadow_evals (created_at);
