-- Notifications (DESIGN §6) and the user contacts they resolve a user id with.
--
-- notifications.id is deterministic (schemas/notifications.py): from the send request's
-- Idempotency-Key, or from (cause event, template, channel) for lifecycle notifications,
-- so every copy of one request finds the same row. status moves QUEUED → RETRYING →
-- SENT or FAILED, never back from SENT or FAILED.

CREATE TABLE notifications (
    id                   text        NOT NULL,
    channel              text        NOT NULL,
    template             text        NOT NULL,
    -- What the request named: a user id or a direct contact.
    to_ref               text        NOT NULL,
    user_id              text,
    -- The contact the message went (or was to go) to, once resolved.
    recipient            text,
    status               text        NOT NULL,
    attempts             integer     NOT NULL DEFAULT 0,
    last_error           text,
    provider_message_id  text,
    cause_event_id       text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    CONSTRAINT notifications_pkey PRIMARY KEY (id),
    CONSTRAINT notifications_channel_check CHECK (channel IN ('EMAIL', 'SMS', 'PUSH')),
    CONSTRAINT notifications_status_check CHECK (
        status IN ('QUEUED', 'RETRYING', 'SENT', 'FAILED')
    )
);

-- The per-user cap counts a recipient's recent notifications.
CREATE INDEX notifications_to_ref_created_idx ON notifications (to_ref, created_at);

CREATE TABLE user_contacts (
    user_id              text        NOT NULL,
    email                text,
    phone                text,
    push_tokens          text[]      NOT NULL DEFAULT '{}',
    preferred_channels   text[]      NOT NULL DEFAULT '{}',
    locale               text,
    -- The event the row is from: an older event never overwrites a newer contact.
    occurred_at          timestamptz NOT NULL,
    last_event_id        text        NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_contacts_pkey PRIMARY KEY (user_id)
);
