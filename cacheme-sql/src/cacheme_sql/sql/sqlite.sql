-- cacheme-sql schema for SQLite (3.24 or newer).
-- cacheme creates this on connect; run it yourself only with create_table=False.
-- To use another table name, replace every "cacheme_data" below with it.
-- key_hash is the SHA-256 of the UTF-8 key; cache_key keeps the full key.
-- expire and updated_at are Unix times in seconds (REAL); expire NULL = never.
CREATE TABLE IF NOT EXISTS cacheme_data (
    key_hash BLOB NOT NULL PRIMARY KEY,
    cache_key TEXT NOT NULL,
    value BLOB NOT NULL,
    expire REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cacheme_data_expire_idx ON cacheme_data (expire) WHERE expire IS NOT NULL;
