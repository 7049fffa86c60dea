-- Provider batch APIs (DESIGN.md "Provider batch APIs"). A latency-tolerant job is parked
-- here (committed before its message is acked), gathered into a provider batch, and its
-- answer (or its fallback to a live call) re-enters the jobs stream as a new message.

-- One provider batch: created (state `submitting`) in the same transaction that assigns
-- its items, so a worker that dies before the provider answered leaves a row that another
-- worker finds (its lease runs out) and submits again, looking it up first by our id in
-- the provider's metadata where the provider has metadata.
CREATE TABLE IF NOT EXISTS batches (
    id                text        PRIMARY KEY,      -- ours: sybatch_<random>
    provider          text        NOT NULL,
    model             text        NOT NULL,         -- the configured model name
    -- submitting | submitted | cancelling | fanout | done
    state             text        NOT NULL CHECK (state IN ('submitting', 'submitted', 'cancelling', 'fanout', 'done')),
    provider_batch_id text,                         -- the provider's id, once it accepted
    items             integer     NOT NULL DEFAULT 0,
    lease_token       text,
    lease_until       timestamptz,
    next_poll_at      timestamptz NOT NULL DEFAULT now(),
    -- after this the batch is cancelled and what it did not answer goes live
    deadline_at       timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    submitted_at      timestamptz,
    finished_at       timestamptz,
    provider_status   text,
    message           text
);
CREATE INDEX IF NOT EXISTS batches_open_idx ON batches (next_poll_at) WHERE state <> 'done';

-- One parked job. `state`: parked (no batch yet) | submitted (in `batch_id`) | answered
-- (its cost row is written, its answer below) | live (the batch did not answer it: it runs
-- as a live call). `published`: the re-entry message (answer or live) is in JetStream.
CREATE TABLE IF NOT EXISTS batch_items (
    tenant      text        NOT NULL,
    id          text        NOT NULL,
    provider    text        NOT NULL,
    model       text        NOT NULL,               -- the configured model name
    max_tokens  integer     NOT NULL,
    route       jsonb,                              -- the job's route when it was parked
    subject     text        NOT NULL,               -- where the job came from (and re-enters)
    payload     bytea       NOT NULL,               -- the job as received
    state       text        NOT NULL CHECK (state IN ('parked', 'submitted', 'answered', 'live')),
    batch_id    text        REFERENCES batches (id),
    line        integer,                            -- its line in the batch (custom id sy-<line>)
    answer      jsonb,                              -- {"output": …, "usage": …} when answered
    message     text,                               -- why it went live
    published   boolean     NOT NULL DEFAULT false,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS batch_items_parked_idx ON batch_items (provider, model, parked_at) WHERE state = 'parked';
CREATE INDEX IF NOT EXISTS batch_items_batch_idx ON batch_items (batch_id);
