-- Whole domains (`[[domain]]` and /v1/domains): mail for any address of the domain is ours, sent
-- to `catch_all` or, with `auto_create`, to an inbox made on the first mail from `template_json`
-- (the `[domain.template]` keys as given, the webhook secret included, never returned by the API).
-- `source`: config (synced from the file at start) or api.
CREATE TABLE domains (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    catch_all TEXT,
    auto_create BIGINT NOT NULL DEFAULT 0,
    max_auto_inboxes BIGINT NOT NULL,
    auto_create_per_minute BIGINT NOT NULL,
    template_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The domain an inbox was auto-created for (source = 'auto'), so the cap and the creation rate
-- count that domain's inboxes in the transaction that creates one.
ALTER TABLE inboxes ADD COLUMN auto_domain TEXT;
CREATE INDEX inboxes_auto_domain ON inboxes (auto_domain, created_at);
