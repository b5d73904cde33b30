"""Durable storage for a Raft node: the RaftStorage interface, its disk and in-memory versions.

`DiskStorage` is the real thing (segmented WAL + snapshot files, see disk.py); `MemoryStorage`
is its twin for tests and the deterministic simulator, with `crash()` to lose unsynced writes.
"""

from raftkv.storage.base import (
    CorruptSnapshotError,
    CorruptWALError,
    DataDirLockedError,
    RaftStorage,
    StorageClosedError,
    StorageError,
    StorageStats,
)
from raftkv.storage.disk import DiskStorage
from raftkv.storage.memory import MemoryStorage
from raftkv.storage.wal import DEFAULT_SEGMENT_BYTES

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "CorruptSnapshotError",
    "CorruptWALError",
    "DataDirLockedError",
    "DiskStorage",
    "MemoryStorage",
    "RaftStorage",
    "StorageClosedError",
    "StorageError",
    "StorageStats",
]
