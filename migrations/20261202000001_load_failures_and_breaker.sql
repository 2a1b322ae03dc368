-- A promoted version that failed to load on a consumer is marked, so consumers do not download and
-- retry it on every poll; promoting it again (after fixing the adapter) clears the mark.
ALTER TABLE model_versions ADD COLUMN load_error TEXT;
ALTER TABLE model_versions ADD COLUMN load_failed_at TIMESTAMPTZ;

-- The dead-letter breaker of each consumer group, shared by its replicas and restarts: a tripped
-- breaker keeps every consumer of the group from consuming until `blip2idc breaker reset` or the
-- configured cooldown (dlq.breaker_cooldown) has passed.
CREATE TABLE breaker_trips (
    group_id    TEXT PRIMARY KEY,
    tripped_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason      TEXT NOT NULL,
    tripped_by  TEXT NOT NULL
);
