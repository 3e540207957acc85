"""Decoded-split cache: each split's images are decoded and resized once, then memory-mapped.

Decoding and resizing a category's images (VisA: about a thousand 1.5-megapixel JPEGs) is the
same work for every model, seed and job of that category. :class:`DecodedCache` keeps the result,
``[N, 3, S, S]`` uint8 images (and ``[N, S, S]`` bool masks for test splits), as one ``.npy`` file
per split and serves later loads from it, bit-identical to a decode.

Key (:func:`decoded_key_parts`): the image files in order (path, byte size and a digest of the
file's bytes, :mod:`ulsad_bench.data.content`; with ``cache.source_keys=stat`` the modification
time instead of the digest), for test splits also every sample's mask files (the same), the size,
the resize method, whether masks were read, a format version, the decoding code's digest
(:func:`ulsad_bench.code_version.source_digest`) and the Pillow and OpenCV versions (a JPEG decoder
or resize upgrade could change pixels). Changing any of them misses.

Entry ``<directory>/<key>.npy``: one flat uint8 array, the images' bytes then (when masks were
read) the masks' bytes, 0 or 1 each, followed by a 24-byte trailer (:data:`TRAILER_MAGIC` and the
xxh3-128 digest of the array's bytes); ``<key>.json`` beside it says what the entry is. Entries live
in the feature cache's folder (``<cache_dir>/features``) and are counted, touched on a hit and
evicted least-recently-used by the same code (:func:`ulsad_bench.features.cache_entries`,
:func:`~ulsad_bench.features.evict_lru`), so ``cache.max_gb`` bounds both together.

Safety:

* An entry is written to a hidden temporary file (``.tmp-*.npy``, which eviction never lists)
  and renamed into place (``os.replace``), so no reader sees a half-written entry. A reader also
  checks the header (dtype, shape) and that the file size is exactly header + data; anything
  else (truncated, unreadable, wrong shape) is a miss, decoded again and overwritten.
* Every hit verifies the trailer's checksum over the pixels (xxh3-128 reads about 10 GB/s from
  the page cache; the pages are read by the job anyway): an entry whose bytes changed is logged
  with its path, deleted, decoded again and rewritten, never used.
* Concurrent jobs missing the same entry: one decodes while the others wait on a lock file
  (``.lock-<key>``, ``fcntl.flock``; hidden, not counted), then they read its entry. Where locks
  are unavailable, each decodes (the same bytes; the last rename wins).
* Hits are mapped copy-on-write (``np.load(mmap_mode="c")``): the arrays are writable, so
  ``torch.from_numpy`` needs no copy and gives no read-only warning; pages are read lazily and
  shared through the page cache by every job on the machine; a write by a consumer (none of
  :class:`~ulsad_bench.data.images.ImageSet`'s own methods writes: ``center_crop`` slices and
  copies, ``float_images`` converts to a new float tensor) changes that process's private copy
  of the page, never the file. Evicting or replacing an entry unlinks or renames the file; a
  process that has it mapped keeps its mapping (POSIX).
* Where the folder cannot be created or written (read-only, disk full), the split is decoded
  and returned uncached, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from ..code_version import source_digest
from ..features import TMP_PREFIX, _touch, cache_key, discard_entry, evict_lru
from .content import stat_line
from .sample import Sample

log = logging.getLogger(__name__)

#: Bump when the entry layout changes (the decoding code's changes are in the key: ``code``).
FORMAT_VERSION = 2
#: the module that decodes: its source and what it imports key every entry
DECODING_CODE = "ulsad_bench.data.images"
TRAILER_MAGIC = b"ULSADX3\x00"
TRAILER_BYTES = len(TRAILER_MAGIC) + 16

#: Fills ``images [N, 3, S, S]`` uint8 (and ``masks [N, S, S]`` bool, zeros on entry, when masks are read).
Decoder = Callable[[np.ndarray, np.ndarray | None], None]


def _library_versions() -> dict[str, str]:
    from PIL import __version__ as pillow

    try:
        import cv2

        opencv = str(cv2.__version__)
    except ImportError:  # pragma: no cover - OpenCV is a dependency; only pil_bilinear works without it
        opencv = "none"
    return {"pillow": str(pillow), "opencv": opencv}


def decoded_key_parts(
    samples: Sequence[Sample], size: int, resize: str, with_masks: bool, source_keys: str = "content"
) -> dict[str, Any]:
    """What a decoded split depends on: a digest of the files (images in order with byte size and
    content digest, or modification time with ``source_keys="stat"``; with masks, each sample's
    mask files the same way), the size, the resize method, whether masks were read,
    :data:`FORMAT_VERSION`, the decoding code's digest and the decoding libraries' versions.

    Raises ``OSError`` when a file cannot be read (the caller then decodes, which names the file).
    """
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(f"\n{stat_line(sample.path, source_keys)}".encode())
        if with_masks:
            for mask_path in sample.mask_paths:
                digest.update(f"\n  mask {stat_line(mask_path, source_keys)}".encode())
            digest.update(b"\n  end")
    return {
        "kind": "decoded_split",
        "format": FORMAT_VERSION,
        "sources": source_keys,
        "code": source_digest(DECODING_CODE),
        "files": digest.hexdigest(),
        "n": len(samples),
        "first": str(samples[0].path) if samples else None,
        "size": int(size),
        "resize": str(resize),
        "masks": bool(with_masks),
        **_library_versions(),
    }


def entry_bytes(n: int, size: int, with_masks: bool) -> int:
    """Length of an entry's flat array: ``n * 3 * size**2`` image bytes (+ ``n * size**2`` mask bytes)."""
    return n * size * size * (4 if with_masks else 3)


def split_views(flat: np.ndarray, n: int, size: int, with_masks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The images ``[n, 3, size, size]`` uint8 and masks ``[n, size, size]`` bool (or None) that
    ``flat`` (uint8, :func:`entry_bytes` long) holds, as contiguous views (no copy)."""
    image_bytes = n * 3 * size * size
    images = np.asarray(flat[:image_bytes]).reshape(n, 3, size, size)
    masks = np.asarray(flat[image_bytes:]).view(np.bool_).reshape(n, size, size) if with_masks else None
    return images, masks


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout_s: float) -> Iterator[bool]:
    """Hold ``fcntl.flock`` on ``lock_path`` (waiting up to ``timeout_s``); yields whether it is
    held (False where locks are unavailable or the wait timed out: the caller proceeds unlocked)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + timeout_s
        held, logged = False, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    log.warning("decoded cache: gave up waiting for %s; decoding here", lock_path)
                    break
                if not logged:
                    log.info("decoded cache: waiting for another job to decode this split (%s)", lock_path.name)
                    logged = True
                time.sleep(0.05)
            except OSError:  # a file system without flock
                break
        yield held
    finally:
        os.close(fd)  # releases the lock


def _checksum_problem(path: Path, flat: np.memmap) -> str | None:
    """None when the trailer after ``flat`` in ``path`` holds ``flat``'s digest, else what is wrong."""
    with open(path, "rb") as handle:
        handle.seek(flat.offset + flat.nbytes)
        trailer = handle.read(TRAILER_BYTES)
    if not trailer.startswith(TRAILER_MAGIC):
        return "no checksum trailer"
    if xxhash.xxh3_128(flat).digest() != trailer[len(TRAILER_MAGIC) :]:
        return "content checksum mismatch: the pixels are not the ones written"
    return None


class DecodedCache:
    """Get-or-decode for the decoded images (and masks) of one split, on disk (see the module doc).

    Args:
        directory: the folder of entries; the feature cache's (``<cache_dir>/features``) so that
            one size limit and one LRU order cover both.
        max_bytes: after each write, least recently used entries of the folder (features,
            models and decoded splits alike) are deleted until it fits; None: unbounded.
        lock_timeout_s: how long a job waits for another job decoding the same split before
            decoding it itself.
        source_keys: ``content`` (key on the files' bytes) or ``stat`` (names, sizes, mtimes):
            :data:`ulsad_bench.data.content.SOURCE_KEYS`.

    Attributes:
        hits / misses: counts since creation (a miss means the split was decoded).
        evicted: names of the entries this cache's writes evicted.
        discarded: names of entries found corrupt (deleted and decoded again).
    """

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int | None = None,
        lock_timeout_s: float = 3600.0,
        source_keys: str = "content",
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.lock_timeout_s = lock_timeout_s
        self.source_keys = source_keys
        self.hits = 0
        self.misses = 0
        self.evicted: list[str] = []
        self.discarded: list[str] = []

    def entry_path(self, parts: dict[str, Any]) -> Path:
        """``<directory>/<cache_key(parts)>.npy``."""
        return self.directory / f"{cache_key(parts)}.npy"

    def get_or_decode(
        self, samples: Sequence[Sample], size: int, resize: str, with_masks: bool, decode: Decoder
    ) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """``(images, masks, hit)``: the split's entry memory-mapped copy-on-write (``hit``
        True), or the arrays ``decode`` filled, after storing them (``hit`` False).

        ``decode(images, masks)`` fills ``images [N, 3, S, S]`` uint8 and, with masks, ``masks
        [N, S, S]`` bool (given all False). Empty splits and splits whose files cannot be
        stat'ed are decoded without the cache.
        """
        n = len(samples)
        try:
            parts = decoded_key_parts(samples, size, resize, with_masks, self.source_keys) if n else None
        except OSError:
            parts = None  # a missing file: the decode raises the dataset's own error, naming it
        if parts is None:
            return (*self._decode(n, size, with_masks, decode), False)
        path = self.entry_path(parts)
        found = self._read(path, n, size, with_masks)
        if found is not None:
            return (*found, True)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            warnings.warn(f"decoded cache {self.directory} unusable ({err}): decoding without it", stacklevel=3)
            return (*self._decode(n, size, with_masks, decode), False)
        lock_path = self.directory / f".lock-{path.stem}"
        with _exclusive(lock_path, self.lock_timeout_s) as held:
            found = self._read(path, n, size, with_masks)  # written by the job we waited for
            if found is not None:
                return (*found, True)
            flat, images, masks = self._decode_flat(n, size, with_masks, decode)
            self._write(path, flat, parts)
            if held:  # later jobs find the entry; waiters on this lock file re-check it after we release
                lock_path.unlink(missing_ok=True)
        return images, masks, False

    def _decode(self, n: int, size: int, with_masks: bool, decode: Decoder) -> tuple[np.ndarray, np.ndarray | None]:
        _, images, masks = self._decode_flat(n, size, with_masks, decode)
        return images, masks

    def _decode_flat(
        self, n: int, size: int, with_masks: bool, decode: Decoder
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        self.misses += 1
        flat = np.empty(entry_bytes(n, size, with_masks), dtype=np.uint8)
        images, masks = split_views(flat, n, size, with_masks)
        if masks is not None:
            masks[...] = False
        decode(images, masks)
        return flat, images, masks

    def _read(self, path: Path, n: int, size: int, with_masks: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The entry's views, or None when it is absent or not exactly what was written."""
        try:
            flat = np.load(path, mmap_mode="c", allow_pickle=False)
            length = entry_bytes(n, size, with_masks)
            ok = (
                isinstance(flat, np.memmap)
                and flat.dtype == np.uint8
                and flat.shape == (length,)
                and flat.offset + length + TRAILER_BYTES == path.stat().st_size
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:  # unreadable header, truncated data
            return self._discard(path, f"unreadable ({err})")
        if not ok:
            return self._discard(path, f"not a {n}-image split of {size} px with its checksum")
        try:
            problem = _checksum_problem(path, flat)
        except FileNotFoundError:  # evicted or replaced by another job meanwhile: a miss, not a corrupt entry
            return None
        if problem:
            return self._discard(path, problem)
        self.hits += 1
        _touch(path)
        return split_views(flat, n, size, with_masks)

    def _discard(self, path: Path, why: str) -> None:
        discard_entry(path, why)
        self.discarded.append(path.name)

    def _write(self, path: Path, flat: np.ndarray, parts: dict[str, Any]) -> None:
        tmp: str | None = None
        try:
            handle, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".npy", dir=path.parent)
            with os.fdopen(handle, "wb") as file:
                np.save(file, flat, allow_pickle=False)
                file.write(TRAILER_MAGIC + xxhash.xxh3_128(flat).digest())
            os.replace(tmp, path)
            tmp = None
            path.with_suffix(".json").write_text(json.dumps(parts, sort_keys=True, indent=1))
        except OSError as err:
            warnings.warn(f"decoded cache: could not write {path} ({err}); continuing uncached", stacklevel=4)
            return
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if self.max_bytes is not None:
            self.evicted += evict_lru(self.directory, self.max_bytes, keep=path)
