"""State backends: `MemoryStore` (embedded default). Redis arrives in a later issue."""

from apiguard.store.base import Ban, Batch, BatchResult, Hit, Store
from apiguard.store.memory import MemoryStore

__all__ = ["Ban", "Batch", "BatchResult", "Hit", "MemoryStore", "Store"]
