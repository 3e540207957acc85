"""Cache of frozen backbone features (and other deterministic artefacts), in memory and on disk.

Frozen features depend only on the images, the backbone, its weights, the layers and the
image size, never on the run seed. They are computed once per such key and reused across
epochs, seeds and jobs. The key is a dict of those values plus the job's code version
(:func:`ulsad_bench.code_version.model_code_version`, given to the cache by the job); its hash
names the file ``<directory>/<hash>.pt``, written atomically (temporary file + rename), so
parallel jobs never read a half-written file; ``<hash>.json`` beside it says what the entry is.

Every entry carries a content checksum (:func:`content_digest`, xxh3-128 over every tensor's
bytes, dtype and shape and every other value), written inside the entry and verified on every
read from disk: an entry whose checksum does not match, that is truncated, that is not an entry
of this format or that fails to unpickle under ``weights_only`` is logged with its path, deleted
and recomputed; it is never used, and never fatal.

Decoded image splits (:mod:`ulsad_bench.data.decoded`, ``<hash>.npy``) share the folder and its limit.
The folder is bounded (``cache.max_gb``): after each write the least recently used entries
(by modification time, which a hit refreshes) are deleted until the folder fits, never the
entry just written. Temporary files a killed job left behind (``.tmp-*``) count against the
limit, and those older than :data:`ORPHAN_AGE_S` are deleted first. An evicted entry is
recomputed when next needed, with the same values. (A hit served from the in-process memory
copy does not touch the file.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import xxhash

log = logging.getLogger(__name__)

#: what an entry file holds: ``{"format": ENTRY_FORMAT, "digest": content_digest(value), "value": value}``
ENTRY_FORMAT = "ulsad-bench-entry/2"
#: a temporary file (``.tmp-*``) untouched for this long was left by a killed job and is deleted
ORPHAN_AGE_S = 3600.0
TMP_PREFIX = ".tmp-"
_MISSING = object()  # an entry that vanished or was discarded: computed again


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _digest_into(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(value.shape)}:".encode())
        digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            digest.update(f"{key!r}=".encode())
            _digest_into(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)}:".encode())
        for item in value:
            _digest_into(digest, item)
    else:
        digest.update(f"V{value!r};".encode())


def content_digest(value: Any) -> str:
    """xxh3-128 (hex) of a cache value: every tensor's dtype, shape and bytes, every other value's
    repr, dicts in their order; equal for a value and its ``torch.save`` / ``torch.load`` copy."""
    digest = xxhash.xxh3_128()
    _digest_into(digest, value)
    return digest.hexdigest()


class CorruptEntry(Exception):
    """A cache entry file that is not what was written (see :func:`read_entry`)."""


def write_entry(path: Path, value: Any) -> None:
    """``value`` with its :func:`content_digest` to ``path``, through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pt", dir=path.parent)
    os.close(handle)
    try:
        torch.save({"format": ENTRY_FORMAT, "digest": content_digest(value), "value": value}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(path: Path) -> Any:
    """The value stored at ``path``; raises :class:`CorruptEntry` saying why when the file does not
    unpickle under ``weights_only``, is not an entry of :data:`ENTRY_FORMAT` or fails its checksum."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:  # evicted by another job meanwhile: the caller's miss, not a corrupt entry
        raise
    except Exception as err:  # truncated, bit-flipped or not a weights-only pickle: all mean "not ours"
        raise CorruptEntry(
            f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(stored, dict) or stored.get("format") != ENTRY_FORMAT or "value" not in stored:
        raise CorruptEntry(f"not a cache entry of format {ENTRY_FORMAT}")
    actual = content_digest(stored["value"])
    if actual != stored.get("digest"):
        raise CorruptEntry(f"content checksum mismatch (stored {stored.get('digest')}, read {actual})")
    return stored["value"]


def discard_entry(path: Path, why: str) -> None:
    """Log why the entry at ``path`` cannot be used, and delete it (with its ``.json``)."""
    log.warning("cache: discarding %s: %s; it is recomputed", path, why)
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)


class FeatureCache:
    """Get-or-compute for tensors keyed by a dict of what determines them.

    Args:
        code_version: the code that computes the values (:func:`~ulsad_bench.code_version.model_code_version`),
            part of every key: entries made by other code are never served.

    Attributes:
        hits / misses: counts since creation (a miss means the compute function ran).
        discarded: entries found corrupt on disk (deleted and recomputed).
    """

    _memory: ClassVar[OrderedDict[str, Any]] = OrderedDict()  # shared by all caches of a process
    memory_items = 4

    def __init__(
        self,
        directory: Path | None,
        enabled: bool = True,
        max_bytes: int | None = None,
        code_version: str | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.enabled = enabled
        self.max_bytes = max_bytes
        self.code_version = code_version
        self.hits = 0
        self.misses = 0
        self.evicted: list[str] = []
        self.discarded: list[str] = []

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
        if self.code_version is not None:
            parts = {**parts, "code": self.code_version}
        key = cache_key(parts)
        if key in self._memory:
            self.hits += 1
            self._memory.move_to_end(key)
            return self._memory[key], True
        path = self.directory / f"{key}.pt" if self.directory is not None else None
        if path is not None and path.is_file():
            try:
                value = read_entry(path)
            except FileNotFoundError:
                value = _MISSING
            except CorruptEntry as err:
                discard_entry(path, str(err))
                self.discarded.append(path.name)
                value = _MISSING
            if value is not _MISSING:
                self.hits += 1
                _touch(path)
                if keep_in_memory:
                    self._remember(key, value)
                return value, True
        self.misses += 1
        value = _to_cpu(compute())
        if path is not None:
            write_entry(path, value)
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
    in ``directory``, least recent first (temporary files: :func:`temporary_files`)."""
    entries = []
    for path in (p for suffix in ENTRY_SUFFIXES for p in Path(directory).glob(f"*{suffix}")):
        if path.name.startswith("."):  # a temporary file (.tmp-*.pt, .tmp-*.npy)
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    return sorted(entries)


def temporary_files(directory: Path) -> list[tuple[float, int, Path]]:
    """``(last write, bytes, path)`` of every temporary file (``.tmp-*``) in ``directory``: an entry
    being written by a running job, or one a killed job left behind."""
    found = []
    for path in Path(directory).glob(f"{TMP_PREFIX}*"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # renamed into place meanwhile
            continue
        found.append((stat.st_mtime, stat.st_size, path))
    return sorted(found)


def cache_bytes(directory: Path) -> int:
    """Bytes the folder's entries and temporary files take (what ``cache.max_gb`` bounds)."""
    if not Path(directory).is_dir():
        return 0
    return sum(size for _, size, _ in (*cache_entries(directory), *temporary_files(directory)))


def remove_orphans(directory: Path, older_than_s: float = ORPHAN_AGE_S) -> list[str]:
    """Delete the temporary files not written to for ``older_than_s`` seconds (a killed job's
    half-written entries; a running job's file is written to continuously); returns their names."""
    now = time.time()
    removed = []
    for mtime, _, path in temporary_files(directory):
        if now - mtime > older_than_s:
            path.unlink(missing_ok=True)
            log.info("cache: removed %s, a temporary file left by a job that did not finish", path)
            removed.append(path.name)
    return removed


def evict_lru(directory: Path, max_bytes: int, keep: Path | None = None) -> list[str]:
    """Delete stale temporary files (:func:`remove_orphans`), then the least recently used entries
    of ``directory`` (each ``.pt`` / ``.npy`` with its ``.json``) until entries and temporary files
    total at most ``max_bytes``; ``keep`` is never deleted."""
    deleted = remove_orphans(directory)
    entries = cache_entries(directory)
    total = sum(size for _, size, _ in entries) + sum(size for _, size, _ in temporary_files(directory))
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
