-- Orders (DESIGN §6): the projection of orders.lifecycle, one row per order.
--
-- Each lifecycle record carries the order's whole state and a revision that grows by
-- one per change (streams/domain/orders.py); a row is replaced only by a higher
-- revision, so a replayed or late record never overwrites newer state. Payments link
-- to orders by payments.order_id.

CREATE TABLE orders (
    order_id           text        NOT NULL,
    user_id            text,
    amount_minor       bigint,
    currency           text,
    status             text        NOT NULL,
    refunded_minor     bigint      NOT NULL DEFAULT 0,
    payment_provider   text,
    payment_intent_id  text,
    -- The intent's client secret, returned by GET /internal/v1/payments/{orderId} so a
    -- client can confirm the payment. Never logged.
    client_secret      text,
    items              jsonb       NOT NULL DEFAULT '[]'::jsonb,
    provider_ids       text[]      NOT NULL DEFAULT '{}',
    revision           bigint      NOT NULL,
    last_event_id      text        NOT NULL,
    last_event_type    text        NOT NULL,
    last_reason        text,
    created_at         timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_pkey PRIMARY KEY (order_id),
    CONSTRAINT orders_status_check CHECK (
        status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'PAYMENT_MISMATCH',
                   'CANCELLED', 'REFUNDED', 'PARTIALLY_REFUNDED')
    )
);

CREATE INDEX orders_user_id_idx ON orders (user_id);
CREATE INDEX orders_payment_intent_id_idx ON orders (payment_intent_id);
-- payments.order_id is already indexed by 0001 (payments_order_id_idx).
