"""What a dataset's files hold: content digests of source files, for cache keys and fingerprints.

A file's name, size and modification time (its *stat*) say cheaply whether it may have changed,
but not that it did not: a file rewritten with other pixels at the same size, its modification
time restored (``touch -r``), has the same stat. Keys made of content digests cannot be fooled
that way: ``cache.source_keys=content`` (default) keys decoded images and frozen features on them
(:mod:`ulsad_bench.data.decoded`, :func:`ulsad_bench.data.images.load_image_set`), and
``resume=content`` compares them (:meth:`ulsad_bench.data.splits.Splits.fingerprint`).

A file's digest is xxh3-64 over its bytes. It is computed once per process for each
``(path, size, modification time, change time, inode)``: rewriting a file changes its change
time, which ``touch`` cannot set back, so a digest is never reused for other bytes. What hashing
costs on a VisA-size category: ``python -m ulsad_bench.decode_bench`` and the README.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import xxhash

#: ``cache.source_keys``: ``content`` hashes every source file's bytes; ``stat`` keys on names,
#: sizes and modification times only (cheaper, and blind to a same-size rewrite with its mtime restored)
SOURCE_KEYS = ("content", "stat")
CHUNK = 1 << 22

_known: dict[tuple[str, int, int, int, int], str] = {}


def check_source_keys(value: str) -> str:
    """``value`` when it is one of :data:`SOURCE_KEYS`, else a ``ValueError`` naming the setting."""
    if value not in SOURCE_KEYS:
        raise ValueError(f"cache.source_keys={value!r}: expected one of {', '.join(SOURCE_KEYS)}")
    return value


def file_digest(path: Path) -> str:
    """xxh3-64 (hex) of the file's bytes, remembered for its current stat (module docstring)."""
    stat = os.stat(path)
    memo = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    found = _known.get(memo)
    if found is not None:
        return found
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    _known[memo] = digest.hexdigest()
    return _known[memo]


def stat_line(path: Path, source_keys: str = "stat") -> str:
    """``path|size|mtime_ns`` (``stat``) or ``path|size|xxh3:<digest>`` (``content``)."""
    stat = Path(path).stat()
    if source_keys == "content":
        return f"{path}|{stat.st_size}|xxh3:{file_digest(path)}"
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def digest_files(paths: Iterable[Path]) -> str:
    """xxh3-128 (hex) over the relative order and content digests of ``paths``."""
    digest = xxhash.xxh3_128()
    for path in paths:
        digest.update(f"{path}|{file_digest(path)}\n".encode())
    return digest.hexdigest()


def forget() -> None:
    """Drop the remembered digests (tests)."""
    _known.clear()
