-- The analysts' review app (`blip2idc review`, src/review): decisions on captions become labels,
-- sessions of signed-in analysts, and an audit log of every write.

-- A label made in the app records which caption it judged: accepted as correct (the caption is the
-- model's) or corrected (the analyst's text). Labels inserted by hand leave these NULL.
ALTER TABLE labels
    ADD COLUMN decision             TEXT CHECK (decision IN ('accepted', 'corrected')),
    ADD COLUMN source_model_version TEXT,
    ADD COLUMN source_caption       TEXT;
-- One decision per pair from the app (a new decision replaces it until a training run used it).
CREATE UNIQUE INDEX labels_review_event_idx ON labels (event_id) WHERE decision IS NOT NULL;
CREATE INDEX labels_event_idx ON labels (event_id);
CREATE INDEX labels_labeled_by_idx ON labels (labeled_by, id DESC);

-- Search pages walk captions newest first with keyset pagination on this order.
CREATE INDEX captions_keyset_idx ON captions (created_at DESC, event_id DESC, model_version DESC);
CREATE INDEX captions_model_version_idx ON captions (model_version, created_at DESC);

-- Signed-in sessions: the cookie holds a random token, the table only its SHA-256.
CREATE TABLE review_sessions (
    token_sha256 BYTEA PRIMARY KEY,
    username     TEXT NOT NULL,
    csrf_token   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX review_sessions_expires_idx ON review_sessions (expires_at);

-- Every write through the app, and every sign-in: who, when, what it was before and after.
CREATE TABLE review_audit (
    id        BIGSERIAL PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    username  TEXT NOT NULL,
    action    TEXT NOT NULL,
    event_id  TEXT,
    label_id  BIGINT,
    before    JSONB,
    after     JSONB,
    client    TEXT
);
CREATE INDEX review_audit_at_idx ON review_audit (at DESC);
CREATE INDEX review_audit_user_idx ON review_audit (username, at DESC);
