-- cacheme-sql schema for PostgreSQL (11 or newer).
-- cacheme creates this on connect; run it yourself only with create_table=False.
-- To use another table name, replace every "cacheme_data" below with it.
-- key_hash is the SHA-256 of the UTF-8 key (a btree entry cannot hold a key of
-- any length); cache_key keeps the full key. expire NULL = never.
CREATE TABLE IF NOT EXISTS cacheme_data (
    key_hash bytea NOT NULL PRIMARY KEY,
    cache_key text NOT NULL,
    value bytea NOT NULL,
    expire timestamptz NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cacheme_data_expire_idx ON cacheme_data (expire) WHERE expire IS NOT NULL;
