-- The HTTP front door (`switchyard serve`): OpenAI-compatible files and batches.
-- Files hold uploaded batch input and the output/error files the front door writes.
CREATE TABLE frontdoor_files (
    id          text        PRIMARY KEY,          -- file-…
    tenant      text        NOT NULL,
    filename    text        NOT NULL,
    purpose     text        NOT NULL,             -- batch | batch_output
    bytes       bigint      NOT NULL,
    content     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX frontdoor_files_tenant ON frontdoor_files (tenant, created_at DESC);

-- One OpenAI batch: its lines run as low-priority jobs (jobs rows, keyed by tenant and
-- the job id each line got); the front door reads their results from `jobs.result`.
CREATE TABLE frontdoor_batches (
    id                 text        PRIMARY KEY,   -- batch_…
    tenant             text        NOT NULL,
    input_file_id      text        NOT NULL,
    endpoint           text        NOT NULL,
    completion_window  text        NOT NULL,
    status             text        NOT NULL,      -- in_progress | finalizing | completed | failed | cancelling | cancelled | expired
    metadata           jsonb,
    total              integer     NOT NULL DEFAULT 0,
    completed          integer     NOT NULL DEFAULT 0,
    failed             integer     NOT NULL DEFAULT 0,
    output_file_id     text,
    error_file_id      text,
    errors             jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    in_progress_at     timestamptz,
    finalizing_at      timestamptz,
    completed_at       timestamptz,
    failed_at          timestamptz,
    expired_at         timestamptz,
    cancelling_at      timestamptz,
    cancelled_at       timestamptz,
    expires_at         timestamptz NOT NULL
);
CREATE INDEX frontdoor_batches_tenant ON frontdoor_batches (tenant, created_at DESC);
CREATE INDEX frontdoor_batches_open ON frontdoor_batches (status) WHERE status IN ('in_progress', 'cancelling');

-- The batch's lines: the job each became, or the error that kept it from becoming one.
CREATE TABLE frontdoor_batch_lines (
    batch_id   text    NOT NULL REFERENCES frontdoor_batches (id) ON DELETE CASCADE,
    line       integer NOT NULL,                  -- 1-based line of the input file
    custom_id  text,
    job_id     text,                              -- null when the line was refused
    error      jsonb,                             -- the error file's line for a refused line
    PRIMARY KEY (batch_id, line)
);
