-- Explicit device lists of rollouts (--devices, --devices-file), resolved in pages by the
-- rollout workflow so that no list sits whole in a workflow payload.
CREATE TABLE IF NOT EXISTS rollout_targets (
    rollout    text NOT NULL,
    device_id  text NOT NULL,
    PRIMARY KEY (rollout, device_id)
);
