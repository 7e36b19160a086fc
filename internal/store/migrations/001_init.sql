-- OTAflow schema, version 1.
CREATE TABLE IF NOT EXISTS devices (
    id           text PRIMARY KEY,
    secret_hash  text NOT NULL DEFAULT '',
    disabled     boolean NOT NULL DEFAULT false,
    labels       jsonb NOT NULL DEFAULT '{}'::jsonb,
    reported     jsonb NOT NULL DEFAULT '{}'::jsonb,
    reported_at  timestamptz,
    last_seen    timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS upgrades (
    run_id       text PRIMARY KEY,
    workflow_id  text NOT NULL,
    device_id    text NOT NULL,
    rollout      text NOT NULL DEFAULT '',
    type         text NOT NULL,
    version      text NOT NULL,
    url          text NOT NULL,
    md5          text NOT NULL,
    size         bigint NOT NULL,
    state        text NOT NULL,
    attempt      integer NOT NULL DEFAULT 0,
    command_id   text NOT NULL DEFAULT '',
    progress     integer NOT NULL DEFAULT 0,
    error_code   integer NOT NULL DEFAULT 0,
    error_desc   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX IF NOT EXISTS upgrades_device_created ON upgrades (device_id, created_at DESC);
CREATE INDEX IF NOT EXISTS upgrades_rollout_state ON upgrades (rollout, state) WHERE rollout <> '';

CREATE TABLE IF NOT EXISTS upgrade_events (
    id          bigserial PRIMARY KEY,
    run_id      text NOT NULL,
    state       text NOT NULL,
    attempt     integer NOT NULL,
    error_code  integer NOT NULL DEFAULT 0,
    detail      text NOT NULL DEFAULT '',
    at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS upgrade_events_run ON upgrade_events (run_id, id);

CREATE TABLE IF NOT EXISTS progress_events (
    id           bigserial PRIMARY KEY,
    device_id    text NOT NULL,
    command_id   text NOT NULL DEFAULT '',
    type         text NOT NULL,
    version      text NOT NULL,
    progress     integer NOT NULL,
    description  text NOT NULL DEFAULT '',
    received_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS progress_events_device ON progress_events (device_id, id DESC);

CREATE TABLE IF NOT EXISTS rejected_messages (
    id           bigserial PRIMARY KEY,
    topic        text NOT NULL,
    device_id    text NOT NULL DEFAULT '',
    reason       text NOT NULL,
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_messages_device ON rejected_messages (device_id, id DESC);
