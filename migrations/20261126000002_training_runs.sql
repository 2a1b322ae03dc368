-- The retraining job's runs: what data, what it learned, how it scored, what it decided.
CREATE TABLE training_runs (
    id                BIGSERIAL PRIMARY KEY,
    started_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at       TIMESTAMPTZ,
    status            TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped')),
    seed              BIGINT NOT NULL,
    base_model        TEXT NOT NULL,
    -- The promoted adapter the run started from (NULL: a fresh LoRA).
    parent_version    TEXT REFERENCES model_versions (version),
    candidate_version TEXT REFERENCES model_versions (version),
    promoted          BOOLEAN NOT NULL DEFAULT false,
    decision          TEXT,
    -- Labels with ids up to this one were considered (the next run's "new" starts after it).
    last_label_id     BIGINT,
    n_new_labels      INTEGER,
    n_train           INTEGER,
    n_holdout         INTEGER,
    losses            JSONB,
    metrics           JSONB,
    durations         JSONB,
    config            JSONB,
    error             TEXT
);
CREATE INDEX training_runs_started_idx ON training_runs (started_at DESC);
