"""Redis and Redis Cluster storage for cacheme (schemes redis://, rediss://, unix://).

This package imports nothing from redis-py until the storage class is used:
``cacheme.Storage("redis://...")`` finds it through the ``cacheme.storages``
entry point and imports ``cacheme_redis.storage`` then.
"""

__version__ = "1.0.0"
