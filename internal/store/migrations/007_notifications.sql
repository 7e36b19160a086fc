-- Issue 12: event notifications (webhooks) and the metrics' counts.
--
-- notify_endpoints are the webhook receivers of single rollouts (starter rollout start
-- --notify URL), with the secret their deliveries are signed with. The deployment's own
-- receiver is configured on the workers, not here.
CREATE TABLE IF NOT EXISTS notify_endpoints (
    id          bigserial PRIMARY KEY,
    rollout     text NOT NULL,
    url         text NOT NULL,
    secret      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notify_endpoints_rollout ON notify_endpoints (rollout);

-- notify_outbox holds every event to deliver, one row per receiver: endpoint 0 is the
-- deployment's receiver, any other a notify_endpoints row. Events are written in the
-- transaction that records what they tell (an upgrade's final state), and delivered in id
-- order per receiver and stream (a device, or a rollout). event_id is the idempotency key a
-- receiver sees on every delivery of the event.
CREATE TABLE IF NOT EXISTS notify_outbox (
    id               bigserial PRIMARY KEY,
    endpoint         bigint NOT NULL DEFAULT 0,
    stream           text NOT NULL,
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text NOT NULL DEFAULT '',
    delivered_at     timestamptz,
    failed_at        timestamptz,
    UNIQUE (event_id, endpoint)
);
CREATE INDEX IF NOT EXISTS notify_outbox_undelivered ON notify_outbox (endpoint, stream, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- The upgrades in flight, counted at every metrics scrape.
CREATE INDEX IF NOT EXISTS upgrades_unfinished ON upgrades (type) WHERE finished_at IS NULL;
