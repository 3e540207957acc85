"""Cache of frozen backbone features (and other deterministic artefacts), in memory and on disk.

Frozen features depend only on the images, the backbone, its weights, the layers and the
image size, never on the run seed. They are computed once per such key and reused across
epochs, seeds and jobs. The key is a dict of those values; its hash names the file
``<directory>/<hash>.pt``, written atomically (temporary file + rename), so parallel jobs
never read a half-written file; ``<hash>.json`` beside it says what the entry is.

Decoded image splits (:mod:`ulsad_bench.data.decoded`, ``<hash>.npy``) share the folder and its limit.
The folder is bounded (``cache.max_gb``): after each write the least recently used entries
(by modification time, which a hit refreshes) are deleted until the folder fits, never the
entry just written. An evicted entry is recomputed when next needed, with the same values. (A hit
served from the in-process memory copy does not touch the file.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class FeatureCache:
    """Get-or-compute for tensors keyed by a dict of what determines them.

    Attributes:
        hits / misses: counts since creation (a miss means the compute function ran).
    """

    _memory: ClassVar[OrderedDict[str, Any]] = OrderedDict()  # shared by all caches of a process
    memory_items = 4

    def __init__(self, directory: Path | None, enabled: bool = True, max_bytes: int | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.enabled = enabled
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.evicted: list[str] = []

    def _remember(self, key: str, value: Any) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def get_or_compute(
        self, parts: dict[str, Any], compute: Callable[[], Any], keep_in_memory: bool = True
    ) -> tuple[Any, bool]:
        """``(value, hit)``: the cached value for ``parts`` (``hit`` True), or the value
        computed, stored and returned (``hit`` False: ``compute`` ran).

        Values are tensors (kept on CPU) or dicts of tensors and plain values (e.g. a
        trained model's state); ``keep_in_memory=False`` keeps large ones on disk only.
        """
        if not self.enabled:
            self.misses += 1
            return _to_cpu(compute()), False
        key = cache_key(parts)
        if key in self._memory:
            self.hits += 1
            self._memory.move_to_end(key)
            return self._memory[key], True
        path = self.directory / f"{key}.pt" if self.directory is not None else None
        if path is not None and path.is_file():
            try:
                value = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError):
                value = None  # unreadable cache entry: recompute and overwrite
            if value is not None:
                self.hits += 1
                _touch(path)
                if keep_in_memory:
                    self._remember(key, value)
                return value, True
        self.misses += 1
        value = _to_cpu(compute())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
            os.close(handle)
            torch.save(value, tmp)
            os.replace(tmp, path)
            (path.with_suffix(".json")).write_text(json.dumps(parts, sort_keys=True, default=str, indent=1))
            self.enforce_limit(keep=path)
        if keep_in_memory:
            self._remember(key, value)
        return value, False

    def enforce_limit(self, keep: Path | None = None) -> list[str]:
        """Delete least recently used entries until the folder holds at most ``max_bytes``;
        returns the deleted entries' names."""
        if self.directory is None or self.max_bytes is None:
            return []
        deleted = evict_lru(self.directory, self.max_bytes, keep=keep)
        self.evicted += deleted
        return deleted

    @classmethod
    def clear_memory(cls) -> None:
        cls._memory.clear()


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # marks the entry as recently used (atime is unreliable: noatime mounts)
        os.utime(path)


#: Entry files the size limit counts: this cache's tensors and decoded splits (ulsad_bench.data.decoded).
ENTRY_SUFFIXES = (".pt", ".npy")


def cache_entries(directory: Path) -> list[tuple[float, int, Path]]:
    """``(last use, bytes, path)`` of every entry (``*.pt``, ``*.npy``: :data:`ENTRY_SUFFIXES`)
    in ``directory``, least recent first."""
    entries = []
    for path in (p for suffix in ENTRY_SUFFIXES for p in Path(directory).glob(f"*{suffix}")):
        if path.name.startswith("."):  # another process's entry being written (.tmp-*.pt, .tmp-*.npy)
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    return sorted(entries)


def evict_lru(directory: Path, max_bytes: int, keep: Path | None = None) -> list[str]:
    """Delete the least recently used entries of ``directory`` (each ``.pt`` / ``.npy`` with its ``.json``)
    until the rest total at most ``max_bytes``; ``keep`` is never deleted."""
    entries = cache_entries(directory)
    total = sum(size for _, size, _ in entries)
    deleted = []
    for _, size, path in entries:
        if total <= max_bytes:
            break
        if keep is not None and path == keep:
            continue
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        total -= size
        deleted.append(path.name)
    return deleted
