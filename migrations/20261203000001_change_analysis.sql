-- Change analysis beside the caption (src/analysis): whether the copy changed anything locally,
-- where, and which C2PA actions name what was done; and whether the model ran at all.

-- changed:       NULL when the pair was not analysed (analysis.enabled = false, or an image under
--                64 px), else whether a local change was found.
-- regions:       the changed regions as boxes in the original image's pixels, [[x0, y0, x1, y1], ...]
--                (x1, y1 exclusive), largest first; NULL when not analysed, [] when unchanged.
-- actions:       C2PA action names (c2pa.resized, c2pa.cropped, c2pa.orientation, c2pa.transcoded,
--                c2pa.color_adjustments, c2pa.filtered, c2pa.edited, c2pa.placed, c2pa.removed,
--                c2pa.drawing) from the alignment, the photometric fit, the local differences and the
--                caption's words.
-- model_skipped: the pair was found unchanged and stored with the fixed caption, without the model.
ALTER TABLE captions
    ADD COLUMN changed       BOOLEAN,
    ADD COLUMN regions       JSONB,
    ADD COLUMN actions       TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN model_skipped BOOLEAN NOT NULL DEFAULT false;

-- WHERE actions @> ARRAY['c2pa.removed'] uses this index.
CREATE INDEX captions_actions_idx ON captions USING GIN (actions);
CREATE INDEX captions_changed_idx ON captions (created_at) WHERE changed;

-- The latest caption of every pair gains the analysis columns (appended, as views allow).
CREATE OR REPLACE VIEW latest_captions AS
SELECT DISTINCT ON (c.event_id)
       c.event_id, p.original_uri, p.republished_uri, p.source_url, p.source_host, p.observed_at,
       p.attributes, c.model_version, c.caption, c.created_at AS captioned_at,
       c.changed, c.regions, c.actions, c.model_skipped
FROM captions c
JOIN image_pairs p USING (event_id)
ORDER BY c.event_id, c.created_at DESC, c.model_version DESC;

-- Pairs per edit action, source host and day (each pair counted once per action, by its latest
-- caption).
CREATE VIEW actions_per_source_day AS
SELECT coalesce(l.source_host, '(unknown)') AS source,
       date_trunc('day', coalesce(l.observed_at, l.captioned_at) AT TIME ZONE 'UTC')::date AS day,
       a.action,
       count(*) AS pairs
FROM latest_captions l
CROSS JOIN LATERAL unnest(l.actions) AS a(action)
GROUP BY 1, 2, 3;

-- Pairs, changed pairs and pairs the model skipped, per source host and day.
CREATE VIEW changes_per_source_day AS
SELECT coalesce(l.source_host, '(unknown)') AS source,
       date_trunc('day', coalesce(l.observed_at, l.captioned_at) AT TIME ZONE 'UTC')::date AS day,
       count(*) AS pairs,
       count(*) FILTER (WHERE l.changed) AS changed,
       count(*) FILTER (WHERE l.changed IS FALSE) AS unchanged,
       count(*) FILTER (WHERE l.model_skipped) AS model_skipped
FROM latest_captions l
GROUP BY 1, 2;

-- Changed pairs with their largest region (regions are stored largest first) and its size in the
-- original's pixels.
CREATE VIEW changed_pairs AS
SELECT l.event_id, l.original_uri, l.republished_uri, l.source_host, l.observed_at, l.captioned_at,
       l.model_version, l.caption, l.actions,
       jsonb_array_length(l.regions) AS region_count,
       l.regions -> 0 AS largest_region,
       ((l.regions -> 0 ->> 2)::bigint - (l.regions -> 0 ->> 0)::bigint)
         * ((l.regions -> 0 ->> 3)::bigint - (l.regions -> 0 ->> 1)::bigint) AS largest_region_pixels
FROM latest_captions l
WHERE l.changed AND jsonb_array_length(l.regions) > 0;
