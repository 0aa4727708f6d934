"""State backends: `MemoryStore` (embedded default). Redis arrives in a later issue."""

from apiguard.store.base import Ban, Batch, BatchResult, Hit, HitResult, Store
from apiguard.store.memory import MemoryStore

__all__ = ["Ban", "Batch", "BatchResult", "Hit", "HitResult", "MemoryStore", "Store"]
