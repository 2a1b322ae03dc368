-- Operators' registry commands (`blip2idc models list|promote|rollback`): who promoted what, when and
-- why, and which version each running consumer has loaded.

-- Every promotion (by the retraining job, `models promote` or `models rollback`), newest last.
CREATE TABLE model_promotions (
    id               BIGSERIAL PRIMARY KEY,
    version          TEXT NOT NULL REFERENCES model_versions (version),
    base_model       TEXT NOT NULL,
    action           TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
    -- The version promoted before this one (NULL: none was).
    previous_version TEXT REFERENCES model_versions (version),
    promoted_by      TEXT NOT NULL,
    reason           TEXT NOT NULL CHECK (length(btrim(reason)) > 0),
    promoted_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX model_promotions_base_model_idx ON model_promotions (base_model, id DESC);

-- Promotions made before this table existed, oldest first.
INSERT INTO model_promotions (version, base_model, action, promoted_by, reason, promoted_at)
SELECT version, base_model, 'promote', 'unknown', 'promoted before promotions were recorded', promoted_at
FROM model_versions WHERE promoted_at IS NOT NULL
ORDER BY promoted_at;

-- The version each running consumer has loaded, refreshed every model.reload_poll_interval and
-- removed when it stops; `models list` counts the rows seen recently.
CREATE TABLE consumer_models (
    consumer    TEXT PRIMARY KEY,
    base_model  TEXT NOT NULL,
    version     TEXT NOT NULL,
    loaded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
