"""State backends: `MemoryStore` (embedded default) and `apiguard.store.redis.RedisStore`
(shared by workers and hosts; imported from its module, since redis-py is an optional extra)."""

from apiguard.store.base import Ban, Batch, BatchResult, Hit, Store
from apiguard.store.memory import MemoryStore

__all__ = ["Ban", "Batch", "BatchResult", "Hit", "MemoryStore", "Store"]
