"""Cache of frozen backbone features, in memory and on disk.

Frozen features depend only on the images, the backbone, its weights, the layers and the
image size, never on the run seed. They are computed once per such key and reused across
epochs, seeds and jobs. The key is a dict of those values; its hash names the file
``<directory>/<hash>.pt``, written atomically (temporary file + rename), so parallel jobs
never read a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class FeatureCache:
    """Get-or-compute for tensors keyed by a dict of what determines them.

    Attributes:
        hits / misses: counts since creation (a miss means the compute function ran).
    """

    _memory: ClassVar[OrderedDict[str, torch.Tensor]] = OrderedDict()  # shared by all caches of a process
    memory_items = 4

    def __init__(self, directory: Path | None, enabled: bool = True) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _remember(self, key: str, value: torch.Tensor) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def get_or_compute(self, parts: dict[str, Any], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Return the cached tensor for ``parts`` or compute, store and return it (on CPU)."""
        if not self.enabled:
            self.misses += 1
            return compute().cpu()
        key = cache_key(parts)
        if key in self._memory:
            self.hits += 1
            self._memory.move_to_end(key)
            return self._memory[key]
        path = self.directory / f"{key}.pt" if self.directory is not None else None
        if path is not None and path.is_file():
            try:
                value = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError):
                value = None  # unreadable cache entry: recompute and overwrite
            if isinstance(value, torch.Tensor):
                self.hits += 1
                self._remember(key, value)
                return value
        self.misses += 1
        value = compute().cpu()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
            os.close(handle)
            torch.save(value, tmp)
            os.replace(tmp, path)
            (path.with_suffix(".json")).write_text(json.dumps(parts, sort_keys=True, default=str, indent=1))
        self._remember(key, value)
        return value

    @classmethod
    def clear_memory(cls) -> None:
        cls._memory.clear()
