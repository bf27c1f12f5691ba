-- Partner leads (DESIGN §6): one row per lead, one row per delivery attempt.
--
-- lead_id is deterministic (uuid5 of partner_id and external_lead_id, schemas/leads.py),
-- so every copy of a lead finds the same row; the unique (partner_id, external_lead_id)
-- is the second line of that. status moves RECEIVED → RETRYING → DELIVERED or
-- DELIVERY_FAILED; attempts counts lead_delivery_attempts rows. DELIVERED is final: a
-- late failure of an older copy never moves a lead back (connectors/postgres/leads.py).
-- An attempt's number is taken under the lead row's lock, in the transaction that
-- records it, so attempts are numbered 1, 2, … without gaps or collisions.

CREATE TABLE leads (
    lead_id            text        NOT NULL,
    partner_id         text        NOT NULL,
    external_lead_id   text        NOT NULL,
    name               text,
    email              text,
    phone              text,
    listing_id         text,
    message            text,
    -- The partner's payload as received.
    payload            jsonb       NOT NULL,
    status             text        NOT NULL,
    attempts           integer     NOT NULL DEFAULT 0,
    last_error         text,
    received_at        timestamptz NOT NULL,
    delivered_at       timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT leads_pkey PRIMARY KEY (lead_id),
    CONSTRAINT leads_partner_external_key UNIQUE (partner_id, external_lead_id),
    CONSTRAINT leads_status_check CHECK (
        status IN ('RECEIVED', 'RETRYING', 'DELIVERED', 'DELIVERY_FAILED')
    )
);

CREATE INDEX leads_partner_status_idx ON leads (partner_id, status);

CREATE TABLE lead_delivery_attempts (
    lead_id            text        NOT NULL REFERENCES leads (lead_id),
    attempt            integer     NOT NULL,
    http_status        integer,
    error              text,
    latency_ms         integer,
    -- What caused the attempt: delivery (the lead's own), retry, or request (deliver-now).
    trigger            text        NOT NULL,
    metadata           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- The record that caused it (the lead's eventId, or the deliver-now command's), so a
    -- redelivered command finds the attempt it already made.
    event_id           text,
    attempted_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lead_delivery_attempts_pkey PRIMARY KEY (lead_id, attempt)
);

CREATE INDEX lead_delivery_attempts_event_idx ON lead_delivery_attempts (lead_id, event_id);
