-- cacheme-sql schema for MySQL 8 and MariaDB 10.5 or newer.
-- cacheme creates this on connect; run it yourself only with create_table=False.
-- To use another table name, replace every "cacheme_data" below with it.
-- key_hash is the SHA-256 of the UTF-8 key (index prefixes cannot hold a key of
-- any length); cache_key keeps the full key. Times are UTC; expire NULL = never.
-- LONGBLOB: values up to max_allowed_packet (BLOB would cap them at 64 KiB).
CREATE TABLE IF NOT EXISTS cacheme_data (
    key_hash BINARY(32) NOT NULL,
    cache_key LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    value LONGBLOB NOT NULL,
    expire DATETIME(6) NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (key_hash),
    INDEX cacheme_data_expire_idx (expire)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
