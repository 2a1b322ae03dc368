-- blip2idc schema: image-pair events, captions, the adapter registry and human labels.

-- One row per image-pair event (first delivery wins; redeliveries do not add rows).
CREATE TABLE image_pairs (
    event_id        TEXT PRIMARY KEY,
    original_uri    TEXT NOT NULL,
    republished_uri TEXT NOT NULL,
    source_url      TEXT,
    -- Host part of source_url, for per-source analytics.
    source_host     TEXT GENERATED ALWAYS AS (lower(substring(source_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/@]*@)?([^/:?#]+)'))) STORED,
    observed_at     TIMESTAMPTZ,
    attributes      JSONB NOT NULL DEFAULT '{}'::jsonb,
    kafka_topic     TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    first_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX image_pairs_source_host_idx ON image_pairs (source_host);
CREATE INDEX image_pairs_observed_at_idx ON image_pairs (observed_at);

-- The adapter registry: every model version that produced captions or was trained.
CREATE TABLE model_versions (
    version       TEXT PRIMARY KEY,
    base_model    TEXT NOT NULL,
    adapter_uri   TEXT,
    metrics       JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    promoted_at   TIMESTAMPTZ
);
CREATE INDEX model_versions_promoted_idx ON model_versions (promoted_at DESC NULLS LAST);

-- One caption per (event, model version): the upsert key that makes redelivery harmless.
CREATE TABLE captions (
    event_id      TEXT NOT NULL REFERENCES image_pairs (event_id) ON DELETE CASCADE,
    model_version TEXT NOT NULL REFERENCES model_versions (version),
    caption       TEXT NOT NULL,
    -- Seconds spent in the model for this event's batch, and from consumption to storage.
    inference_seconds   DOUBLE PRECISION NOT NULL,
    end_to_end_seconds  DOUBLE PRECISION NOT NULL,
    batch_size    INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    caption_tsv   TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', caption)) STORED,
    PRIMARY KEY (event_id, model_version)
);
CREATE INDEX captions_tsv_idx ON captions USING GIN (caption_tsv);
CREATE INDEX captions_created_at_idx ON captions (created_at);

-- Human-verified difference captions, the retraining job's input.
CREATE TABLE labels (
    id              BIGSERIAL PRIMARY KEY,
    original_uri    TEXT NOT NULL,
    modified_uri    TEXT NOT NULL,
    caption         TEXT NOT NULL CHECK (length(btrim(caption)) > 0),
    category        TEXT,
    -- NULL until the retraining job assigns it; 'holdout' is frozen once assigned.
    split           TEXT CHECK (split IN ('train', 'holdout')),
    labeled_by      TEXT NOT NULL,
    event_id        TEXT REFERENCES image_pairs (event_id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX labels_created_at_idx ON labels (created_at);
CREATE INDEX labels_split_idx ON labels (split);

-- Analyst views -------------------------------------------------------------------------------

-- The most recent caption of every pair, with its source metadata.
CREATE VIEW latest_captions AS
SELECT DISTINCT ON (c.event_id)
       c.event_id, p.original_uri, p.republished_uri, p.source_url, p.source_host, p.observed_at,
       p.attributes, c.model_version, c.caption, c.created_at AS captioned_at
FROM captions c
JOIN image_pairs p USING (event_id)
ORDER BY c.event_id, c.created_at DESC, c.model_version DESC;

-- Pairs and captions per source host and day (UTC, by observation time, else first sighting).
CREATE VIEW captions_per_source_day AS
SELECT coalesce(p.source_host, '(unknown)') AS source,
       date_trunc('day', coalesce(p.observed_at, p.first_seen_at) AT TIME ZONE 'UTC')::date AS day,
       count(DISTINCT p.event_id) AS pairs,
       count(c.event_id) AS captions
FROM image_pairs p
LEFT JOIN captions c USING (event_id)
GROUP BY 1, 2;

-- Full-text search over captions: SELECT * FROM search_captions('watermark removed');
CREATE FUNCTION search_captions(query TEXT)
RETURNS TABLE (event_id TEXT, model_version TEXT, caption TEXT, rank REAL, captioned_at TIMESTAMPTZ)
LANGUAGE sql STABLE AS $$
    SELECT c.event_id, c.model_version, c.caption,
           ts_rank(c.caption_tsv, websearch_to_tsquery('english', query)) AS rank, c.created_at
    FROM captions c
    WHERE c.caption_tsv @@ websearch_to_tsquery('english', query)
    ORDER BY rank DESC, c.created_at DESC
$$;
