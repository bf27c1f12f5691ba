-- Raw webhooks, the billing projections and the processed-events ledger (DESIGN §6).
--
-- Status vocabularies and their order live in streams/domain/status.py; the CHECK
-- constraints below list the same values (tests/test_postgres_projection.py checks
-- that they agree). Amounts are in minor units, currencies lower-case. Every billing
-- row remembers the event that last moved it (last_event_id, last_event_at).

CREATE TABLE webhook_events (
    provider        text        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    signature       text,
    raw_body        bytea       NOT NULL,
    content_type    text        NOT NULL,
    correlation_id  text,
    received_at     timestamptz NOT NULL,
    processed_at    timestamptz,
    status          text        NOT NULL DEFAULT 'RECEIVED',
    reason          text,
    CONSTRAINT webhook_events_pkey PRIMARY KEY (provider, event_id),
    CONSTRAINT webhook_events_status_check
        CHECK (status IN ('RECEIVED', 'FAILED', 'IGNORED', 'PROCESSED'))
);
-- The admin log lists by time, optionally by status (GET /v1/admin/webhooks/logs).
CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);
CREATE INDEX webhook_events_status_received_at_idx ON webhook_events (status, received_at);

CREATE TABLE payments (
    provider               text        NOT NULL,
    provider_payment_id    text        NOT NULL,
    order_id               text,
    user_id                text,
    amount_minor           bigint,
    currency               text,
    status                 text        NOT NULL,
    amount_refunded_minor  bigint      NOT NULL DEFAULT 0,
    last_event_id          text        NOT NULL,
    last_event_at          timestamptz NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_pkey PRIMARY KEY (provider, provider_payment_id),
    CONSTRAINT payments_status_check CHECK (
        status IN ('PENDING', 'FAILED', 'SUCCEEDED', 'PARTIALLY_REFUNDED', 'REFUNDED')
    ),
    CONSTRAINT payments_amount_minor_check CHECK (amount_minor >= 0),
    CONSTRAINT payments_amount_refunded_minor_check CHECK (amount_refunded_minor >= 0),
    CONSTRAINT payments_currency_check CHECK (currency = lower(currency))
);
CREATE INDEX payments_order_id_idx ON payments (order_id);

CREATE TABLE refunds (
    provider        text        NOT NULL,
    refund_id       text        NOT NULL,
    payment_id      text,
    order_id        text,
    amount_minor    bigint,
    currency        text,
    status          text        NOT NULL,
    last_event_id   text        NOT NULL,
    last_event_at   timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_pkey PRIMARY KEY (provider, refund_id),
    CONSTRAINT refunds_status_check CHECK (
        status IN ('UNKNOWN', 'PENDING', 'SUCCEEDED', 'FAILED', 'CANCELED')
    ),
    CONSTRAINT refunds_amount_minor_check CHECK (amount_minor >= 0),
    CONSTRAINT refunds_currency_check CHECK (currency = lower(currency))
);
-- A payment's refunded total is the sum over this index.
CREATE INDEX refunds_payment_idx ON refunds (provider, payment_id);
CREATE INDEX refunds_order_id_idx ON refunds (order_id);

CREATE TABLE invoices (
    provider        text        NOT NULL,
    invoice_id      text        NOT NULL,
    order_id        text,
    user_id         text,
    payment_id      text,
    amount_minor    bigint,
    currency        text,
    status          text        NOT NULL,
    last_event_id   text        NOT NULL,
    last_event_at   timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT invoices_pkey PRIMARY KEY (provider, invoice_id),
    CONSTRAINT invoices_status_check CHECK (
        status IN ('UNKNOWN', 'DRAFT', 'OPEN', 'UNCOLLECTIBLE', 'PAID', 'VOID')
    ),
    CONSTRAINT invoices_amount_minor_check CHECK (amount_minor >= 0),
    CONSTRAINT invoices_currency_check CHECK (currency = lower(currency))
);
CREATE INDEX invoices_order_id_idx ON invoices (order_id);

CREATE TABLE subscriptions (
    provider         text        NOT NULL,
    subscription_id  text        NOT NULL,
    user_id          text,
    amount_minor     bigint,
    currency         text,
    status           text        NOT NULL,
    last_event_id    text        NOT NULL,
    last_event_at    timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_pkey PRIMARY KEY (provider, subscription_id),
    CONSTRAINT subscriptions_status_check CHECK (
        status IN (
            'UNKNOWN', 'INCOMPLETE', 'INCOMPLETE_EXPIRED', 'TRIALING', 'ACTIVE', 'PAST_DUE',
            'UNPAID', 'PAUSED', 'CANCELED', 'CREATED', 'AUTHENTICATED', 'PENDING', 'HALTED',
            'COMPLETED', 'EXPIRED'
        )
    ),
    CONSTRAINT subscriptions_amount_minor_check CHECK (amount_minor >= 0),
    CONSTRAINT subscriptions_currency_check CHECK (currency = lower(currency))
);
CREATE INDEX subscriptions_user_id_idx ON subscriptions (user_id);

CREATE TABLE checkout_sessions (
    provider        text        NOT NULL,
    session_id      text        NOT NULL,
    order_id        text,
    user_id         text,
    payment_id      text,
    amount_minor    bigint,
    currency        text,
    status          text        NOT NULL,
    last_event_id   text        NOT NULL,
    last_event_at   timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkout_sessions_pkey PRIMARY KEY (provider, session_id),
    CONSTRAINT checkout_sessions_status_check CHECK (
        status IN ('OPEN', 'COMPLETED', 'FAILED', 'EXPIRED')
    ),
    CONSTRAINT checkout_sessions_amount_minor_check CHECK (amount_minor >= 0),
    CONSTRAINT checkout_sessions_currency_check CHECK (currency = lower(currency))
);
CREATE INDEX checkout_sessions_order_id_idx ON checkout_sessions (order_id);

-- Which consumer applied which event: the second line of dedupe (DESIGN §5), written in
-- the same transaction as the effect it guards.
CREATE TABLE processed_events (
    consumer      text        NOT NULL,
    event_id      text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT processed_events_pkey PRIMARY KEY (consumer, event_id)
);
-- For pruning entries older than the dedupe window.
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
